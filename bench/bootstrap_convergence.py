"""Is the bootstrap seed converged, and how much does it hallucinate?

Trains the seed with the default configuration (early stopping on validation loss), then again with a
larger step budget and more patience, and evaluates both on the held-out split. A converged seed moves
by less than a point. Also reports the bootstrap CLIP's retrieval recall@1 against chance.

    make bench            # or: .venv/bin/python bench/bootstrap_convergence.py [--world-seed N] [--budget-factor F]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from si_assets.assets.bootstrap import cooccurring_pairs  # noqa: E402
from si_assets.evaluation.evaluate import evaluate_model  # noqa: E402
from si_assets.evaluation.metrics import ObjectVocabulary  # noqa: E402
from si_assets.modeling.bootstrap import train_seed_model  # noqa: E402
from si_assets.modeling.sft import SFTConfig  # noqa: E402
from si_assets.modeling.tiny_vlm import TinyVLMSpec  # noqa: E402
from si_assets.verifier.clip import (  # noqa: E402
    ClipScorer,
    ClipTrainConfig,
    TinyClipSpec,
    build_tiny_clip,
    load_clip,
    retrieval_recall_at_1,
    save_clip,
    train_clip,
)
from si_assets.world import EVAL_PROMPT, WorldSpec, decode_png, generate_split, hard_negative_caption  # noqa: E402

HEADLINE = ["precision", "recall", "f1", "chair_s", "mentions_per_caption", "pope_f1", "pope_adversarial_f1"]


def seed_metrics(spec: WorldSpec, sft: SFTConfig, seed_train: pl.DataFrame, eval_split: pl.DataFrame) -> dict:
    started = time.perf_counter()
    model, processor, result = train_seed_model(seed_train, spec.kinds, list(spec.colours), TinyVLMSpec(), sft)
    vocab = ObjectVocabulary.from_kinds(spec.kinds)
    images = [decode_png(b) for b in eval_split["image_png"]]
    ev = evaluate_model(model, processor, eval_split["id"].to_list(), images, eval_split["objects"].to_list(), vocab, EVAL_PROMPT)
    return {"steps": result.steps, "best_step": result.best_step, "seconds": time.perf_counter() - started, **ev.metrics}


def clip_recall(spec: WorldSpec, eval_split: pl.DataFrame) -> float:
    clip_train = generate_split(spec, "clip_train")
    with tempfile.TemporaryDirectory() as folder:
        save_clip(build_tiny_clip(TinyClipSpec()), TinyClipSpec().open_clip_config(), Path(folder))
        model, preprocess, tokenizer = load_clip(folder)
        rng = np.random.default_rng(0)
        partner_spec = spec.model_copy(update={"cooccurrence": cooccurring_pairs(clip_train)})
        negatives = [hard_negative_caption(o, c, partner_spec, rng) for o, c in zip(clip_train["objects"], clip_train["colours"])]
        images = torch.stack([preprocess(decode_png(b)) for b in clip_train["image_png"]])
        train_clip(model, tokenizer, images, clip_train["caption"].to_list(), negatives, ClipTrainConfig())
        scorer = ClipScorer(model, preprocess, tokenizer)
        return retrieval_recall_at_1(scorer, [decode_png(b) for b in eval_split["image_png"]], eval_split["caption"].to_list())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-seed", type=int, nargs="+", default=[0])
    parser.add_argument("--budget-factor", type=float, default=1.5, help="step budget of the longer run")
    parser.add_argument("--skip-longer", action="store_true", help="only the default run (for other world seeds)")
    parser.add_argument("--clip", action="store_true", help="also train the bootstrap CLIP and report recall@1")
    args = parser.parse_args()
    rows = []
    for world_seed in args.world_seed:
        spec = WorldSpec(seed=world_seed)
        seed_train, eval_split = generate_split(spec, "seed_train"), generate_split(spec, "eval")
        default = SFTConfig()
        runs = {"default": default}
        if not args.skip_longer:
            runs["longer"] = default.model_copy(
                update={"max_steps": int(default.max_steps * args.budget_factor), "patience": default.patience * 3}
            )
        for name, sft in runs.items():
            m = seed_metrics(spec, sft, seed_train, eval_split)
            rows.append({"world_seed": world_seed, "run": name, **{k: m[k] for k in ["steps", "best_step", "seconds", *HEADLINE]}})
            print(rows[-1], flush=True)
        if args.clip:
            print(f"world {world_seed}: bootstrap CLIP recall@1 over 50 = {clip_recall(spec, eval_split):.3f} (chance 0.020)")
    table = pl.DataFrame(rows)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200):
        print(table)
    if not args.skip_longer:
        for world_seed in args.world_seed:
            sub = table.filter(pl.col("world_seed") == world_seed)
            delta = sub.filter(pl.col("run") == "longer")["precision"][0] - sub.filter(pl.col("run") == "default")["precision"][0]
            print(f"world {world_seed}: precision(longer) - precision(default) = {100 * delta:+.1f} points")


if __name__ == "__main__":
    main()
