"""Collection stage: the images of the round and the model that captions them."""

import time

import dagster as dg
import polars as pl
from PIL import Image
from pydantic import Field

from resources import VisionLanguageModels
from si_assets.assets.common import COLLECTION, preview, versioned
from si_assets.collection.sampling import NEGATIVE, POSITIVE, HallucinationRatios, decode_plan, plan_requests
from si_assets.modeling.mixed_decoding import MixSpace, SamplerSettings
from si_assets.storage import Checkpoint
from si_assets.world import decode_png


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


class SamplingConfig(dg.Config):
    """How responses are decoded: p_mix = (1-h)·p_img + h·p_txt, h_pos ~ N(mu_pos, sd_pos) for positives,
    h_neg ~ N(mu_neg, sd_neg) for negatives; negative k shares positive k's sampler seed."""

    n_samples: int = Field(8, ge=1, description="positives per image; CLIP picks the chosen one (1 = literal recipe)")
    n_negatives: int = Field(4, ge=1, description="negatives per image; CLIP picks the rejected one")
    mu_pos: float = 0.0
    sd_pos: float = 0.05
    mu_neg: float = 0.35
    sd_neg: float = 0.1
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 32
    mix_space: MixSpace = "probs"
    seed: int = 0
    batch_size: int = Field(64, ge=1, description="requests per generate call (each is two rows)")


@dg.multi_asset(
    outs={
        "sampled_responses": dg.AssetOut(
            group_name=COLLECTION, description="Positive (low-h) responses: image id, prompt, response, h, seed."
        ),
        "hallucinated_negatives": dg.AssetOut(
            group_name=COLLECTION,
            description="Controlled-hallucination negatives (h above their positive's), seed-matched.",
        ),
    },
    code_version="collect-1",
)
def collected_responses(
    context: dg.AssetExecutionContext,
    config: SamplingConfig,
    models: VisionLanguageModels,
    seed_checkpoint: Checkpoint,
    unlabeled_images: pl.DataFrame,
):
    """Both sides of every pair come from one decoding pass, so positive k and negative k share a batch,
    a seed and the sampler settings, and differ only in h."""
    ratios = HallucinationRatios(config.mu_pos, config.sd_pos, config.mu_neg, config.sd_neg)
    settings = SamplerSettings(config.temperature, config.top_p, config.max_new_tokens, config.mix_space)
    plan = plan_requests(unlabeled_images, config.n_samples, config.n_negatives, ratios, config.seed)
    image_by_id = decode_images(unlabeled_images)
    model, processor = models.load(seed_checkpoint.path)
    started = time.perf_counter()
    responses = decode_plan(
        model, processor, plan, image_by_id, settings, seed_checkpoint.version, config.batch_size, context.log.info
    )
    seconds = time.perf_counter() - started
    for name, role in (("sampled_responses", POSITIVE), ("hallucinated_negatives", NEGATIVE)):
        table = responses.filter(pl.col("role") == role)
        yield versioned(
            table,
            output_name=name,
            rows=table.height,
            mean_h=float(table["h"].mean()),
            mean_words=float(table["response"].str.split(" ").list.len().mean()),
            empty_responses=table.filter(pl.col("response").str.strip_chars() == "").height,
            seed_checkpoint_version=seed_checkpoint.version,
            decode_seconds=seconds,
            responses_per_second=responses.height / seconds,
            preview=preview(table.select("image_id", "prompt", "sample", "h", "response")),
        )


def decode_images(images: pl.DataFrame) -> dict[str, Image.Image]:
    return {i: decode_png(b) for i, b in zip(images["id"], images["image_png"])}
