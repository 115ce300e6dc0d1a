"""Training data for the SFT baselines, in the preference-pair layout the trainer takes (chosen = rejected;
the SFT objective reads only `chosen`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import polars as pl
from PIL import Image

from si_assets.modeling.generation import generate_greedy


def sft_pairs(image_ids: Sequence[str], prompts: Sequence[str], targets: Sequence[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"pair_id": list(image_ids), "image_id": list(image_ids), "prompt": list(prompts), "chosen": list(targets)}
    ).with_columns(rejected=pl.col("chosen"))


def self_sft_pairs(
    model,
    processor,
    images: pl.DataFrame,
    image_by_id: Mapping[str, Image.Image],
    log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Label-free self-training: the seed's own greedy captions of the unlabeled images."""
    ids, prompts = images["id"].to_list(), images["prompt"].to_list()
    captions = generate_greedy(model, processor, [image_by_id[i] for i in ids], prompts, log=log, desc="self-SFT")
    return sft_pairs(ids, prompts, captions)
