"""A bootstrap CLIP that has also seen objects alone: the bootstrap CLIP's architecture and training, on the
`clip_train` images plus one window per object (16 px around it, the rest of the image masked as region support
masks it), captioned with that object alone ("a red circle."), each with hard negatives. The windows' places are
replayed from the world (a captioned table holds the kinds, not where they are), as a grounding data set would give
them; the round reads nothing of it but the CLIP. Use the folder it writes as a round's verifier:
`ops.verified_pairs.config.verifier: FOLDER`.

    .venv/bin/python bench/region_clip.py --out DIR [--store .si_store] [--steps 1800] [--world JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from si_assets.bootstrap.clip import ClipTrainConfig, TinyClipSpec, build_tiny_clip, train_clip  # noqa: E402
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.verifier.clip import ClipScorer, load_clip, retrieval_recall_at_1, save_clip  # noqa: E402
from si_assets.verifier.regions import masked_view  # noqa: E402
from si_assets.world import WorldSpec, decode_png, hard_negative_caption  # noqa: E402
from si_assets.world.generate import caption_text, split_scenes  # noqa: E402
from si_assets.world.vocabulary import caption_mentions  # noqa: E402

WINDOW = 16  # pixels: the side of one cell of the world's layout grid, as region support's default windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the open_clip folder to write")
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--world", type=json.loads, default={}, help="WorldConfig overrides of the store's world")
    args = parser.parse_args()

    spec, store = WorldSpec(**args.world), ArtifactStore(args.store)
    table = store.read_table(store.head("world_clip_train"))
    scenes = split_scenes(spec, "clip_train")
    config, arch = ClipTrainConfig(steps=args.steps), TinyClipSpec(image_size=spec.image_size)
    torch.manual_seed(config.seed)
    save_clip(build_tiny_clip(arch), arch.open_clip_config(), args.out)
    model, preprocess, tokenizer = load_clip(str(args.out))
    rng = np.random.default_rng(config.seed)
    images, captions, negatives = [], [], []
    rows = table.select("id", "image_png", "caption", "objects", "colours").iter_rows()
    for image_id, png, caption, objects, colours in rows:
        placed = scenes[image_id]
        if [o.kind for o in placed] != objects:
            raise SystemExit(f"{image_id}: the world replayed differs from the store's; pass the store's --world")
        image = decode_png(png)
        views = [(image, caption, caption_mentions(caption, objects, colours))]
        for o in placed:
            x, y, half = round(o.cx), round(o.cy), WINDOW // 2
            box = (max(0, x - half), max(0, y - half), min(image.width, x + half), min(image.height, y + half))
            views.append((masked_view(image, box), caption_text([(o.kind, o.colour)]), [(o.kind, o.colour)]))
        for view, text, mentions in views:
            images.append(preprocess(view))
            captions.append(text)
            negatives.append([hard_negative_caption(mentions, spec, rng) for _ in range(config.negatives_per_image)])
    print(f"{table.height} images and {len(images) - table.height} object windows; {args.steps} steps")
    started = time.perf_counter()
    stats = train_clip(model, tokenizer, torch.stack(images), captions, negatives, config)
    save_clip(model, arch.open_clip_config(), args.out)
    dev = store.read_table(store.head("world_dev"))
    scorer = ClipScorer(model, preprocess, tokenizer)
    recall = retrieval_recall_at_1(scorer, [decode_png(b) for b in dev["image_png"]], dev["caption"].to_list())
    seconds = time.perf_counter() - started
    print(f"trained in {seconds:.0f} s, loss {stats['final_loss']:.3f}; dev recall@1 {recall:.3f}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
