"""Collection stage: the images of the round and the model that captions them."""

from typing import Literal

import dagster as dg
import polars as pl
from PIL import Image
from pydantic import Field

from resources import ArtifactStoreResource, VisionLanguageModels
from si_assets.assets.common import (
    COLLECTION,
    ROUNDS,
    consumed,
    preflight,
    preview,
    versioned,
)
from si_assets.collection.images import build_pool, folder_entries, manifest_entries, world_pool
from si_assets.collection.validation import InputLimits
from si_assets.modeling.chat import patch_size, prompt_token_counter
from si_assets.modeling.sources import resolve_model
from si_assets.rounds import ChampionRegistry
from si_assets.storage import Checkpoint
from si_assets.world import CAPTION_PROMPTS, decode_png


class ImagePoolConfig(dg.Config):
    """Where the round's images come from, and the limits every image and prompt is checked against."""

    source: Literal["world", "folder", "manifest"] = "world"
    folder: str | None = Field(None, description="the image root: all images under it, or the manifest's paths")
    manifest: str | None = Field(None, description="Parquet / CSV / JSONL with `path` (under `folder`), `prompt`")
    prompts: list[str] = Field(default_factory=lambda: list(CAPTION_PROMPTS), description="for images without one")
    max_reject_rate: float = Field(0.1, ge=0, le=1, description="the blocking check fails above this share")
    max_pixels: int = Field(InputLimits.max_pixels, ge=1, description="larger images are rejected unread")
    min_side: int = Field(InputLimits.min_side, ge=1, description="raised to the processor's patch size")
    max_prompt_tokens: int = Field(InputLimits.max_prompt_tokens, ge=1)


@dg.asset(
    group_name=COLLECTION,
    code_version="unlabeled-3",
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
    image and prompt is checked first (prompt tokens with the seed's own tokenizer); rejects are stored with a
    reason code. A folder is snapshotted into the artifact, so the round can be re-run after it changes."""
    processor = models.load_processor(seed_checkpoint.path)
    limits = InputLimits(config.max_pixels, max(config.min_side, patch_size(processor)), config.max_prompt_tokens)
    count_tokens = prompt_token_counter(processor)
    if config.source == "world":
        pool = world_pool(world_improve, limits, count_tokens)
    else:
        if not config.folder:
            raise dg.Failure(f"unlabeled_images: source {config.source!r} needs `folder`, the image root")
        if config.source == "manifest" and not config.manifest:
            raise dg.Failure("unlabeled_images: source 'manifest' needs `manifest`, the table of image paths")
        entries = manifest_entries(config.manifest) if config.source == "manifest" else folder_entries(config.folder)
        pool = build_pool(entries, config.folder, config.prompts, limits, count_tokens)
    table = pool.images
    rejects = store.get().put(pool.rejects, "unlabeled_images_rejects", context.partition_key)
    context.log.info(f"{table.height} images admitted, {pool.rejects.height} rejected: {pool.reject_counts()}")
    if table.height == 0:
        raise dg.Failure(f"unlabeled_images: no usable image ({pool.rejects.height} rejected: {pool.reject_counts()})")
    yield versioned(
        table,
        preview=preview(table),
        **(consumed(world_improve=world_improve) if config.source == "world" else {}),
        distinct_prompts=table["prompt"].n_unique(),
        rejected=pool.rejects.height,
        rejects=preview(pool.rejects, rows=20),
        rejects_table=dg.MetadataValue.path(rejects.uri),
        **{f"rejects/{reason}": n for reason, n in pool.reject_counts().items()},
        source=config.manifest or config.folder or "world:improve",
    )
    yield dg.AssetCheckResult(
        check_name="reject_rate",
        passed=pool.reject_rate <= config.max_reject_rate,
        metadata={"reject_rate": pool.reject_rate, "limit": config.max_reject_rate, "rejected": pool.rejects.height},
        description="share of inputs that could not be used",
    )


class SeedConfig(dg.Config):
    base: str | None = Field(
        None,
        description="the model round 1 starts from: a save_pretrained folder or a hub id (org/name, from the "
        "Hugging Face cache when the hub is offline); unset: the bootstrap seed",
    )
    revision: str | None = Field(None, description="with a hub id: the commit, tag or branch to pin")


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


def decode_images(images: pl.DataFrame) -> dict[str, Image.Image]:
    return {i: decode_png(b) for i, b in zip(images["id"], images["image_png"])}
