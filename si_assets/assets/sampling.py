"""Collection stage, sampling: every image's positives and controlled-hallucination negatives, decoded in shards.

`collected_responses` is a graph: `plan_shards` fans out one `sample_shard` op per shard, each decoding its own
chunks of the request plan (a GPU-pool step: with the multiprocess executor, shards run side by side, as many
at once as the `gpu` pool allows), and `merge_shards` reads every chunk back into the two tables. Shards split one
chunk list, so the merged tables are exactly the unsharded run's; `shards: 1` is a plain single step.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import asdict

import dagster as dg
import polars as pl
from pydantic import Field

from resources import ArtifactStoreResource, VisionLanguageModels
from si_assets.assets.collection import decode_images
from si_assets.assets.common import (
    COLLECTION,
    GPU_POOL,
    GPU_STEP_TAGS,
    ROUNDS,
    STEP_IO_MANAGER,
    consumed,
    data_version,
    preflight,
    preview,
    round_seed_of,
    versioned,
)
from si_assets.collection.sampling import NEGATIVE, POSITIVE, HallucinationRatios, decode_plan, plan_requests
from si_assets.modeling.mixed_decoding import MixSpace, SamplerSettings
from si_assets.modeling.preflight import model_runs_without_image
from si_assets.storage import Checkpoint
from si_assets.storage.chunks import WHOLE, ChunkStats, Shard, run_in_chunks
from si_assets.storage.memo import config_key

DECODER_CODE_VERSION = "collect-3"
OUTPUTS = ("sampled_responses", POSITIVE), ("hallucinated_negatives", NEGATIVE)


class SamplingConfig(dg.Config):
    """How responses are decoded: p_mix = (1-h)·p_img + h·p_txt, h_pos ~ N(mu_pos, sd_pos) for positives,
    h_neg ~ N(mu_neg, sd_neg) for negatives; negative k shares positive k's sampler seed."""

    n_samples: int = Field(8, ge=1, description="positives per image; CLIP picks the chosen one (1 = literal recipe)")
    n_negatives: int = Field(4, ge=1, description="negatives per image; CLIP picks the rejected one")
    mu_pos: float = HallucinationRatios.mu_pos
    sd_pos: float = HallucinationRatios.sd_pos
    mu_neg: float = HallucinationRatios.mu_neg
    sd_neg: float = HallucinationRatios.sd_neg
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 32
    mix_space: MixSpace = "probs"
    prior_delay: int = Field(0, ge=0, description="tokens decoded from the image alone before mixing starts")
    seed: int = 0
    batch_size: int = Field(64, ge=1, description="requests per generate call (each is two rows)")
    chunk_size: int = Field(1024, ge=1, description="requests per stored chunk: a killed run resumes after the last")
    shards: int = Field(1, ge=1, description="sampling steps that split the chunks; run in parallel per `gpu` pool")


def collect(
    context: dg.OpExecutionContext,
    config: SamplingConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    unlabeled_images: pl.DataFrame,
    shard: Shard = WHOLE,
) -> tuple[pl.DataFrame, ChunkStats]:
    """The shard's chunks of the round's request plan, decoded or read back. The model is loaded only when a
    chunk is missing, so a merge after finished shards reads tables only."""
    ratios = HallucinationRatios(config.mu_pos, config.sd_pos, config.mu_neg, config.sd_neg)
    settings = SamplerSettings(
        config.temperature, config.top_p, config.max_new_tokens, config.mix_space, config.prior_delay
    )
    plan = plan_requests(
        unlabeled_images, config.n_samples, config.n_negatives, ratios, round_seed_of(context, config.seed)
    )
    device = models.compute.shard_device(shard.index)
    loaded: list = []

    def decode(chunk: pl.DataFrame) -> pl.DataFrame:
        if not loaded:  # the first missing chunk: model and images are needed only now
            model, processor = models.load(seed_checkpoint.path, device=device)
            with preflight("collected_responses"):
                model_runs_without_image(model, processor)
            loaded.extend((model, processor, decode_images(unlabeled_images)))
        model, processor, image_by_id = loaded
        version, batch = seed_checkpoint.version, config.batch_size
        return decode_plan(model, processor, chunk, image_by_id, settings, version, batch, context.log.info)

    # Everything a chunk's responses depend on besides its own rows (which name the chunk).
    key = config_key(
        seed_checkpoint.version,
        data_version(unlabeled_images),
        json.dumps(asdict(settings)),
        f"{device.type}/{models.compute.torch_dtype()}/batch{config.batch_size}",
        DECODER_CODE_VERSION,
    )
    return run_in_chunks(
        store.get(), "collected_responses", key, plan, config.chunk_size, decode, context.log.info, shard
    )


@dg.op(out=dg.DynamicOut(int, io_manager_key=STEP_IO_MANAGER))
def plan_shards(config: SamplingConfig) -> Iterator[dg.DynamicOutput[int]]:
    """One dynamic output per shard; each becomes a `sample_shard` step."""
    for index in range(config.shards):
        yield dg.DynamicOutput(index, mapping_key=f"shard_{index}")


@dg.op(pool=GPU_POOL, tags=GPU_STEP_TAGS, out=dg.Out(dict, io_manager_key=STEP_IO_MANAGER))
def sample_shard(
    context: dg.OpExecutionContext,
    config: SamplingConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    unlabeled_images: pl.DataFrame,
    shard: int,
) -> dict:
    """Decodes this shard's chunks into the store (resumable chunk by chunk); returns what it did."""
    started = time.perf_counter()
    table, stats = collect(
        context, config, models, store, seed_checkpoint, unlabeled_images, Shard(shard, config.shards)
    )
    seconds = time.perf_counter() - started
    context.log.info(f"shard {shard + 1}/{config.shards}: {table.height} responses, {stats} in {seconds:.1f}s")
    return {"shard": shard, "rows": table.height, "computed": stats.computed, "reused": stats.reused, "s": seconds}


@dg.op(
    out={name: dg.Out(pl.DataFrame) for name, _ in OUTPUTS},
)
def merge_shards(
    context: dg.OpExecutionContext,
    config: SamplingConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    unlabeled_images: pl.DataFrame,
    shards: list[dict],
) -> Iterator[dg.Output]:
    """All chunks, in plan order, split into positives and negatives."""
    started = time.perf_counter()
    responses, chunks = collect(context, config, models, store, seed_checkpoint, unlabeled_images)
    computed = sum(s["computed"] for s in shards) + chunks.computed
    # Shards run side by side; the merge decodes only chunks no shard finished (none, unless called on its own).
    decode_seconds = max((s["s"] for s in shards), default=0.0) + time.perf_counter() - started
    for name, role in OUTPUTS:
        table = responses.filter(pl.col("role") == role)
        yield versioned(
            table,
            output_name=name,
            rows=table.height,
            mean_h=float(table["h"].mean()),
            mean_words=float(table["response"].str.split(" ").list.len().mean()),
            empty_responses=table.filter(pl.col("response").str.strip_chars() == "").height,
            sampling_seed=round_seed_of(context, config.seed),
            shards=config.shards,
            decode_seconds=decode_seconds,
            chunks=chunks.chunks,
            chunks_reused=chunks.chunks - computed,
            **({"responses_per_second": responses.height / decode_seconds} if computed == chunks.chunks else {}),
            preview=preview(table.select("image_id", "prompt", "sample", "h", "response")),
            **consumed(seed_checkpoint=seed_checkpoint, unlabeled_images=unlabeled_images),
        )


def _same_config_for_every_op(config: dict) -> dict:
    """The graph's one config (at `ops.collected_responses.config`, as for a plain asset) to each of its ops."""
    values = SamplingConfig(**config).model_dump()
    return {op: {"config": values} for op in ("plan_shards", "sample_shard", "merge_shards")}


@dg.graph_multi_asset(
    outs={
        "sampled_responses": dg.AssetOut(
            code_version=DECODER_CODE_VERSION,
            description="Positive (low-h) responses: image id, prompt, response, h, seed.",
        ),
        "hallucinated_negatives": dg.AssetOut(
            code_version=DECODER_CODE_VERSION,
            description="Controlled-hallucination negatives (h above their positive's), seed-matched.",
        ),
    },
    group_name=COLLECTION,  # (a graph asset takes its group here, not from its outs)
    partitions_def=ROUNDS,
    config=dg.ConfigMapping(_same_config_for_every_op, config_schema=SamplingConfig.to_config_schema()),
)
def collected_responses(seed_checkpoint: Checkpoint, unlabeled_images: pl.DataFrame):
    """Both sides of every pair come from one decoding pass, so positive k and negative k share a batch,
    a seed and the sampler settings, and differ only in h."""
    done = plan_shards().map(lambda shard: sample_shard(seed_checkpoint, unlabeled_images, shard)).collect()
    return merge_shards(seed_checkpoint, unlabeled_images, done)
