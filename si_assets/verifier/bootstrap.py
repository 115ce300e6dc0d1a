"""Bootstrap the CLIP verifier from the world's captioned split (Dagster-free)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from si_assets.verifier.clip import (
    ClipScorer,
    ClipTrainConfig,
    TinyClipSpec,
    build_tiny_clip,
    load_clip,
    retrieval_recall_at_1,
    save_clip,
    train_clip,
)
from si_assets.world import WorldSpec, decode_png, hard_negative_caption
from si_assets.world.vocabulary import caption_mentions, caption_order_of, cooccurring_pairs, world_vocabulary


def train_bootstrap_clip(
    clip_train: pl.DataFrame,
    eval_split: pl.DataFrame,
    arch: TinyClipSpec,
    config: ClipTrainConfig,
    directory: Path,
    retrieval_candidates: int = 50,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train a tiny open_clip model on captions + hard negatives, save it as a `local-dir:` folder in
    `directory`, and report its image→text recall@1 on the held-out split."""
    torch.manual_seed(config.seed)
    save_clip(build_tiny_clip(arch), arch.open_clip_config(), directory)
    model, preprocess, tokenizer = load_clip(str(directory))  # the same preprocessing users get
    kinds, colours = world_vocabulary(clip_train)
    # Hard negatives add an object's usual partner where captions name it: read both off the captioned data.
    partner_spec = WorldSpec(
        kinds=kinds,
        colours={c: [0, 0, 0] for c in colours},
        cooccurrence=cooccurring_pairs(clip_train),
        caption_order=caption_order_of(clip_train),
        max_objects=1,
    )
    rng = np.random.default_rng(config.seed)
    negatives = [
        [hard_negative_caption(mentions, partner_spec, rng) for _ in range(config.negatives_per_image)]
        for mentions in (
            caption_mentions(*row) for row in clip_train.select("caption", "objects", "colours").iter_rows()
        )
    ]
    images = torch.stack([preprocess(decode_png(b)) for b in clip_train["image_png"]])
    stats = train_clip(model, tokenizer, images, clip_train["caption"].to_list(), negatives, config, log)
    save_clip(model, arch.open_clip_config(), directory)
    scorer = ClipScorer(model, preprocess, tokenizer)
    eval_images = [decode_png(b) for b in eval_split["image_png"]]
    recall = retrieval_recall_at_1(scorer, eval_images, eval_split["caption"].to_list(), retrieval_candidates)
    return {**stats, "eval_recall_at_1": recall, "chance_recall_at_1": 1 / retrieval_candidates}
