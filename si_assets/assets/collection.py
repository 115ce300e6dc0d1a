"""Collection stage: the images of the round and the model that captions them."""

import dagster as dg
import polars as pl

from resources import ArtifactStoreResource, VisionLanguageModels
from si_assets.assets.common import (
    COLLECTION,
    ROUNDS,
    consumed,
    preflight,
    preview,
    versioned,
)
from si_assets.collection.images import ImagePoolSettings
from si_assets.modeling.sources import SeedSettings, resolve_model
from si_assets.rounds import ChampionRegistry
from si_assets.rounds.steps import admit_images
from si_assets.storage import Checkpoint


class ImagePoolConfig(dg.Config, ImagePoolSettings):
    """Where the round's images come from, and the limits every image and prompt is checked against."""


@dg.asset(
    group_name=COLLECTION,
    code_version="unlabeled-4",
    partitions_def=ROUNDS,
    check_specs=[dg.AssetCheckSpec("reject_rate", asset="unlabeled_images", blocking=True, partitions_def=ROUNDS)],
)
def unlabeled_images(
    context: dg.AssetExecutionContext,
    config: ImagePoolConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    world_improve: pl.DataFrame,
):
    """The round's image pool and prompts: id, content hash, prompt, image bytes, source. No labels. Every
    file, image and prompt is checked first (prompt tokens with the seed's own tokenizer); what cannot be used is
    stored with a reason code. A folder is snapshotted into the artifact, so the round can be re-run after it
    changes."""
    pool = admit_images(config, models.load_processor(seed_checkpoint.path), world_improve, context.partition_key)
    table = pool.images
    rejects = store.get().put(pool.rejects, "unlabeled_images_rejects", context.partition_key)
    summary = pool.reject_summary(config.max_reject_rate)
    context.log.info(f"{table.height} images admitted; {summary}")
    if table.height == 0:
        raise dg.Failure(f"no usable image in {config.described()}; {summary}")
    yield versioned(
        table,
        preview=preview(table),
        **(consumed(world_improve=world_improve) if config.source == "world" else {}),
        distinct_prompts=table["prompt"].n_unique(),
        rejected=pool.rejects.height,
        rejects=preview(pool.rejects, rows=20),
        rejects_table=dg.MetadataValue.path(rejects.uri),
        **{f"rejects/{reason}": n for reason, n in pool.reject_counts().items()},
        source=config.described(),
    )
    yield dg.AssetCheckResult(
        check_name="reject_rate",
        passed=pool.reject_rate <= config.max_reject_rate,
        metadata={
            "reject_rate": pool.reject_rate,
            "limit": config.max_reject_rate,
            "failed": pool.failures.height,
            "rejected": pool.rejects.height,
            "rejects_table": dg.MetadataValue.path(rejects.uri),
        },
        description=summary,
    )


class SeedConfig(dg.Config, SeedSettings):
    """The model round 1 starts from."""


@dg.asset(group_name=COLLECTION, code_version="seed-checkpoint-3", partitions_def=ROUNDS)
def seed_checkpoint(
    context: dg.AssetExecutionContext,
    config: SeedConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    bootstrap_seed_model: Checkpoint,
) -> dg.Output[Checkpoint]:
    """The model this round improves: the champion promoted by the latest earlier round, or the base model
    (`base`, or the bootstrap seed) when no round has promoted one. Records which version it took and from where,
    and runs the pre-flight checks on it (files, architecture, processor, chat template, image-free path, memory)."""
    registry = ChampionRegistry(store.get())
    champion = registry.champion_before(context.partition_key)
    with preflight("seed_checkpoint"):
        if champion is None and config.base:
            resolved = resolve_model(config.base, config.revision)
            checkpoint, origin = Checkpoint(resolved.path), {"source": f"base: {resolved.origin}"}
        elif champion is None:
            checkpoint, origin = bootstrap_seed_model, {"source": "base: bootstrap_seed_model"}
        else:
            checkpoint = registry.checkpoint(champion)
            origin = {"source": f"champion of {champion.round}", "champion_round": champion.round}
        report = models.preflight(checkpoint.path)
    context.log.info(
        f"{context.partition_key} starts from {checkpoint.version} ({origin['source']}); pre-flight passed: "
        f"{report.architecture}, {report.parameters:,} parameters, {report.image_tokens} image tokens per image"
    )
    return versioned(checkpoint, **origin, **report.metadata(), **consumed(seed=checkpoint))
