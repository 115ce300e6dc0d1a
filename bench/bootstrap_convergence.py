"""Is the bootstrap seed converged, and how much does it hallucinate?

Trains the seed with the default configuration (early stopping on validation loss), then again with a
larger step budget and more patience, and evaluates both on the held-out split. A converged seed moves
by less than a point. `--further N` instead gives the trained default seed N more steps at the learning rate its
schedule ended with (`--from-store` takes it from the demo's store instead of training it). Also reports the
bootstrap CLIP's retrieval recall@1 against chance.

    make bench            # or: .venv/bin/python bench/bootstrap_convergence.py [--world-seed N] [--budget-factor F]
    .venv/bin/python bench/bootstrap_convergence.py --further 750 --from-store .si_store
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402
import torch  # noqa: E402

from si_assets.bootstrap.clip import (  # noqa: E402
    ClipTrainConfig,
    TinyClipSpec,
    train_bootstrap_clip,  # noqa: E402
)
from si_assets.bootstrap.seed_model import continue_training, train_seed_model  # noqa: E402
from si_assets.bootstrap.sft import SFTConfig  # noqa: E402
from si_assets.bootstrap.tiny_vlm import TinyVLMSpec  # noqa: E402
from si_assets.evaluation.evaluate import evaluate_model  # noqa: E402
from si_assets.evaluation.metrics import ObjectVocabulary  # noqa: E402
from si_assets.modeling.loading import load_checkpoint  # noqa: E402
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.world import EVAL_PROMPT, WorldSpec, decode_png, generate_split  # noqa: E402
from si_assets.world.vocabulary import world_vocabulary  # noqa: E402

HEADLINE = ["precision", "recall", "f1", "chair_s", "mentions_per_caption", "pope_f1", "pope_adversarial_f1"]


def eval_metrics(model, processor, eval_split: pl.DataFrame) -> dict:
    vocab = ObjectVocabulary.from_kinds(world_vocabulary(eval_split)[0])
    images = [decode_png(b) for b in eval_split["image_png"]]
    ids, truths = eval_split["id"].to_list(), eval_split["objects"].to_list()
    return evaluate_model(model, processor, ids, images, truths, vocab, EVAL_PROMPT).metrics


def seed_metrics(spec: WorldSpec, sft: SFTConfig, seed_train: pl.DataFrame, eval_split: pl.DataFrame) -> dict:
    started = time.perf_counter()
    # The same vocabulary order as the assets, so the default run reproduces `make demo` bit for bit.
    kinds, colours = world_vocabulary(seed_train)
    model, processor, result = train_seed_model(seed_train, kinds, colours, TinyVLMSpec(), sft)
    return {
        "steps": result.steps,
        "best_step": result.best_step,
        "seconds": time.perf_counter() - started,
        **eval_metrics(model, processor, eval_split),
    }


def further_budget(
    spec: WorldSpec, seed_train: pl.DataFrame, eval_split: pl.DataFrame, steps: int, store: Path | None
) -> list[dict]:
    """The default seed (trained here, or the store's `bootstrap_seed_model`) before and after `steps` more."""
    kinds, colours = world_vocabulary(seed_train)
    if store is not None:
        artifacts = ArtifactStore(store)
        model, processor = load_checkpoint(
            artifacts.load(artifacts.head("bootstrap_seed_model")).path, torch.device("cpu"), torch.float32
        )
    else:
        model, processor, _ = train_seed_model(seed_train, kinds, colours, TinyVLMSpec(), SFTConfig())
    rows = [{"world_seed": spec.seed, "run": "default", **eval_metrics(model, processor, eval_split)}]
    result = continue_training(model, processor, seed_train, kinds, SFTConfig(), steps)
    val = [round(c["val_loss"], 4) for c in result.curve]
    rows.append({"world_seed": spec.seed, "run": f"+{steps} steps", **eval_metrics(model, processor, eval_split)})
    print(f"validation caption loss during the further {steps} steps: {val}")
    return rows


def clip_recall(spec: WorldSpec, eval_split: pl.DataFrame) -> float:
    with tempfile.TemporaryDirectory() as folder:
        stats = train_bootstrap_clip(
            generate_split(spec, "clip_train"), eval_split, TinyClipSpec(), ClipTrainConfig(), Path(folder)
        )
    return stats["eval_recall_at_1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-seed", type=int, nargs="+", default=[0])
    parser.add_argument("--budget-factor", type=float, default=1.5, help="step budget of the longer run")
    parser.add_argument("--skip-longer", action="store_true", help="only the default run (for other world seeds)")
    parser.add_argument("--clip", action="store_true", help="also train the bootstrap CLIP and report recall@1")
    parser.add_argument("--world", default="{}", help="world overrides as JSON, e.g. '{\"caption_noise\": 0.35}'")
    parser.add_argument("--further", type=int, help="continue the default seed this many steps instead")
    parser.add_argument("--from-store", type=Path, help="with --further: the seed of this store (world seed 0)")
    args = parser.parse_args()
    rows = []
    for world_seed in args.world_seed:
        spec = WorldSpec(**{**json.loads(args.world), "seed": world_seed})
        seed_train, eval_split = generate_split(spec, "seed_train"), generate_split(spec, "dev")
        if args.further:
            runs = further_budget(spec, seed_train, eval_split, args.further, args.from_store)
            rows += [{k: r[k] for k in ["world_seed", "run", *HEADLINE]} for r in runs]
            delta = runs[1]["precision"] - runs[0]["precision"]
            print(f"world {world_seed}: precision after {args.further} more steps {100 * delta:+.2f} points")
            continue
        default = SFTConfig()
        runs = {"default": default}
        if not args.skip_longer:
            runs["longer"] = default.model_copy(
                update={"max_steps": int(default.max_steps * args.budget_factor), "patience": default.patience * 3}
            )
        for name, sft in runs.items():
            m = seed_metrics(spec, sft, seed_train, eval_split)
            rows.append(
                {
                    "world_seed": world_seed,
                    "run": name,
                    **{k: m[k] for k in ["steps", "best_step", "seconds", *HEADLINE]},
                }
            )
            print(rows[-1], flush=True)
        if args.clip:
            recall = clip_recall(spec, eval_split)
            print(f"world {world_seed}: bootstrap CLIP recall@1 over 50 = {recall:.3f} (chance 0.020)")
    table = pl.DataFrame(rows)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200):
        print(table)
    if not args.skip_longer and not args.further:
        for world_seed in args.world_seed:
            sub = table.filter(pl.col("world_seed") == world_seed)
            delta = (
                sub.filter(pl.col("run") == "longer")["precision"][0]
                - sub.filter(pl.col("run") == "default")["precision"][0]
            )
            print(f"world {world_seed}: precision(longer) - precision(default) = {100 * delta:+.1f} points")


if __name__ == "__main__":
    main()
