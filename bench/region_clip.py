"""A bootstrap CLIP that has also seen objects alone, trained outside the bootstrap: the bootstrap CLIP's
architecture and training with `object_window` 1/3 (each `clip_train` image, then one masked window per object box
captioned with that object alone, each with hard negatives), 1,800 steps. It draws the hard negatives from the
world's own spec where the bootstrap reads kinds and colours off the captions: the same negatives in another random
order, so its weights differ from the bootstrap's. The region-support and consensus results in docs/results.md were
measured with it; a round uses the folder it writes as its verifier: `ops.verified_pairs.config.verifier: FOLDER`.

    .venv/bin/python bench/region_clip.py --out DIR [--store .si_store] [--steps 1800] [--world JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from si_assets.bootstrap.clip import (  # noqa: E402
    ClipTrainConfig,
    TinyClipSpec,
    build_tiny_clip,
    train_clip,
    training_examples,
)
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.verifier.clip import ClipScorer, load_clip, retrieval_recall_at_1, save_clip  # noqa: E402
from si_assets.world import WorldSpec, decode_png  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the open_clip folder to write")
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--world", type=json.loads, default={}, help="WorldConfig overrides of the store's world")
    args = parser.parse_args()

    spec, store = WorldSpec(**args.world), ArtifactStore(args.store)
    table = store.read_table(store.head("world_clip_train"))
    config = ClipTrainConfig(steps=args.steps, object_window=1 / 3)
    arch = TinyClipSpec(image_size=spec.image_size)
    torch.manual_seed(config.seed)
    save_clip(build_tiny_clip(arch), arch.open_clip_config(), args.out)
    model, preprocess, tokenizer = load_clip(str(args.out))
    images, captions, negatives = training_examples(table, preprocess, spec, config)
    print(f"{table.height} images and {len(captions) - table.height} object windows; {args.steps} steps")
    started = time.perf_counter()
    stats = train_clip(model, tokenizer, images, captions, negatives, config)
    save_clip(model, arch.open_clip_config(), args.out)
    dev = store.read_table(store.head("world_dev"))
    scorer = ClipScorer(model, preprocess, tokenizer)
    recall = retrieval_recall_at_1(scorer, [decode_png(b) for b in dev["image_png"]], dev["caption"].to_list())
    seconds = time.perf_counter() - started
    print(f"trained in {seconds:.0f} s, loss {stats['final_loss']:.3f}; dev recall@1 {recall:.3f}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
