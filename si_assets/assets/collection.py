"""Collection stage: the images of the round and the model that captions them."""

import json
import time
from dataclasses import asdict
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
    data_version,
    preflight,
    preview,
    round_seed_of,
    versioned,
)
from si_assets.collection.images import build_pool, folder_entries, manifest_entries, world_pool
from si_assets.collection.sampling import NEGATIVE, POSITIVE, HallucinationRatios, decode_plan, plan_requests
from si_assets.collection.validation import InputLimits
from si_assets.modeling.chat import patch_size, prompt_token_counter
from si_assets.modeling.mixed_decoding import MixSpace, SamplerSettings
from si_assets.modeling.preflight import model_runs_without_image
from si_assets.modeling.sources import resolve_model
from si_assets.rounds import ChampionRegistry
from si_assets.storage import Checkpoint
from si_assets.storage.chunks import run_in_chunks
from si_assets.storage.memo import config_key
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
    context.log.info(f"{context.partition_key} starts from {checkpoint.version} ({origin['source']}); {report}")
    return versioned(checkpoint, **origin, **report.metadata(), **consumed(seed=checkpoint))


DECODER_CODE_VERSION = "collect-3"


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
    chunk_size: int = Field(1024, ge=1, description="requests per stored chunk: a killed run resumes after the last")


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
    code_version=DECODER_CODE_VERSION,
    partitions_def=ROUNDS,
)
def collected_responses(
    context: dg.AssetExecutionContext,
    config: SamplingConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    unlabeled_images: pl.DataFrame,
):
    """Both sides of every pair come from one decoding pass, so positive k and negative k share a batch,
    a seed and the sampler settings, and differ only in h."""
    ratios = HallucinationRatios(config.mu_pos, config.sd_pos, config.mu_neg, config.sd_neg)
    settings = SamplerSettings(config.temperature, config.top_p, config.max_new_tokens, config.mix_space)
    seed = round_seed_of(context, config.seed)
    plan = plan_requests(unlabeled_images, config.n_samples, config.n_negatives, ratios, seed)
    image_by_id = decode_images(unlabeled_images)
    model, processor = models.load(seed_checkpoint.path)
    with preflight("collected_responses"):
        model_runs_without_image(model, processor)
    started = time.perf_counter()

    def decode(chunk: pl.DataFrame) -> pl.DataFrame:
        version, batch = seed_checkpoint.version, config.batch_size
        return decode_plan(model, processor, chunk, image_by_id, settings, version, batch, context.log.info)

    # Everything a chunk's responses depend on besides its own rows (which name the chunk).
    key = config_key(
        seed_checkpoint.version,
        data_version(unlabeled_images),
        json.dumps(asdict(settings)),
        f"{model.device.type}/{model.dtype}/batch{config.batch_size}",
        DECODER_CODE_VERSION,
    )
    responses, chunks = run_in_chunks(
        store.get(), "collected_responses", key, plan, config.chunk_size, decode, context.log.info
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
            sampling_seed=seed,
            decode_seconds=seconds,
            chunks=chunks.chunks,
            chunks_reused=chunks.reused,
            **({"responses_per_second": responses.height / seconds} if not chunks.reused else {}),
            preview=preview(table.select("image_id", "prompt", "sample", "h", "response")),
            **consumed(seed_checkpoint=seed_checkpoint, unlabeled_images=unlabeled_images),
        )


def decode_images(images: pl.DataFrame) -> dict[str, Image.Image]:
    return {i: decode_png(b) for i, b in zip(images["id"], images["image_png"])}
