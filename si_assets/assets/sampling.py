"""Collection stage, sampling: every image's positives and controlled-hallucination negatives, decoded in shards.

`collected_responses` is a graph: `plan_shards` fans out one `sample_shard` op per shard, each decoding its own
chunks of the request plan (a GPU-pool step: with the multiprocess executor, shards run side by side, as many
at once as the `gpu` pool allows), and `merge_shards` reads every chunk back into the two tables. Shards split one
chunk list, so the merged tables are exactly the unsharded run's; `shards: 1` is a plain single step.
"""

import time
from collections.abc import Iterator

import dagster as dg
import polars as pl

from resources import ArtifactStoreResource, VisionLanguageModels
from si_assets.assets.common import (
    COLLECTION,
    GPU_POOL,
    GPU_STEP_TAGS,
    ROUNDS,
    STEP_IO_MANAGER,
    consumed,
    preflight,
    preview,
    versioned,
)
from si_assets.collection.sampling import NEGATIVE, POSITIVE, SamplingSettings
from si_assets.rounds.naming import round_seed
from si_assets.rounds.steps import DECODER_CODE_VERSION, sample
from si_assets.storage import Checkpoint
from si_assets.storage.chunks import WHOLE, ChunkStats, Shard

OUTPUTS = ("sampled_responses", POSITIVE), ("hallucinated_negatives", NEGATIVE)


class SamplingConfig(dg.Config, SamplingSettings):
    """How responses are decoded: p_mix = (1-h)·p_img + h·p_txt, h_pos ~ N(mu_pos, sd_pos) for positives,
    h_neg ~ N(mu_neg, sd_neg) for negatives; negative k shares positive k's sampler seed."""


def collect(
    context: dg.OpExecutionContext,
    config: SamplingConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    unlabeled_images: pl.DataFrame,
    shard: Shard = WHOLE,
) -> tuple[pl.DataFrame, ChunkStats]:
    device = models.compute.shard_device(shard.index)
    with preflight("collected_responses"):
        return sample(
            config,
            models,
            store.get(),
            seed_checkpoint,
            unlabeled_images,
            context.partition_key,
            device,
            models.compute.torch_dtype(),
            shard,
            context.log.info,
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
            sampling_seed=round_seed(config.seed, context.partition_key),
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
