"""Collection stage: the images of the round and the model that captions them."""

import dagster as dg
import polars as pl

from si_assets.assets.common import COLLECTION, preview, versioned
from si_assets.storage import Checkpoint


@dg.asset(group_name=COLLECTION, code_version="unlabeled-1")
def unlabeled_images(world_improve: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """The round's image pool and prompts: id, content hash, prompt, image bytes. No labels."""
    table = world_improve.select("id", "image_sha256", "prompt", "image_png")
    return versioned(table, preview=preview(table), distinct_prompts=table["prompt"].n_unique())


@dg.asset(group_name=COLLECTION, code_version="seed-checkpoint-1")
def seed_checkpoint(bootstrap_seed_model: Checkpoint) -> dg.Output[Checkpoint]:
    """The model to improve. On the embedded default it is the bootstrap seed; the champion of an
    earlier round replaces it once rounds exist. Stored as its own version so every downstream artifact
    names the exact weights it came from."""
    return versioned(bootstrap_seed_model, source="bootstrap_seed_model")
