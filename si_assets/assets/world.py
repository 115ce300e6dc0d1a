"""The embedded world's splits: captioned data for the bootstrap, an unlabeled pool, held-out eval."""

import dagster as dg
import polars as pl

from si_assets.assets.common import WORLD, preview, versioned
from si_assets.world import SPLIT_NAMES, WorldSpec, generate_split


class WorldConfig(dg.Config, WorldSpec):
    """Every knob of the procedural world (seed, kinds, colours, co-occurrence, difficulty, split sizes)."""


@dg.multi_asset(
    outs={
        f"world_{split}": dg.AssetOut(
            group_name=WORLD,
            description=f"The world's `{split}` split"
            + (
                " (images and prompts only: no captions, no objects)."
                if split == "improve"
                else " (with ground truth)."
            ),
            is_required=True,
        )
        for split in SPLIT_NAMES
    },
    code_version="world-2",
)
def world_splits(context: dg.AssetExecutionContext, config: WorldConfig):
    """Disjoint seeded splits: each from its own random stream of (world seed, split name)."""
    spec = WorldSpec(**config.model_dump())
    for split in SPLIT_NAMES:
        df = generate_split(spec, split)
        extra: dict = {"preview": preview(df), "images": df.height}
        if "objects" in df.columns:
            extra["objects_per_image"] = float(df["objects"].list.len().mean())
        if split == "seed_train":
            noisy = df.filter(pl.col("caption_objects").list.len() > pl.col("objects").list.len()).height
            extra["noisy_captions"] = noisy
        context.log.info(f"{split}: {df.height} images")
        yield versioned(df, output_name=f"world_{split}", **extra)
