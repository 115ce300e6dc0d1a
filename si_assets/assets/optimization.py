"""Optimization stage: DPO with a LoRA adapter on the verified pairs (or a configured baseline)."""

import shutil
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from resources import ArtifactStoreResource, VisionLanguageModels
from si_assets.assets.collection import decode_images
from si_assets.assets.common import (
    GPU_POOL,
    GPU_STEP_TAGS,
    OPTIMIZATION,
    ROUND_AUTOMATION,
    ROUNDS,
    consumed,
    markdown_table,
    preflight,
    round_seed_of,
    versioned,
)
from si_assets.modeling.preflight import image_tokens_fit
from si_assets.optimization.dpo import (
    DPOSettings,
    compute_reference,
    save_trained,
    train_dpo,
)
from si_assets.optimization.reference_cache import cached_reference
from si_assets.optimization.self_training import self_sft_pairs
from si_assets.organization.verification import training_pairs
from si_assets.storage import Checkpoint
from si_assets.storage.memo import config_key

REFERENCE_CODE_VERSION = "reference-logps-2"


class TrainingConfig(dg.Config, DPOSettings):
    """DPO (TRL + LoRA) settings, plus which optimization runs."""

    optimization: Literal["dpo", "self_sft"] = Field(
        "dpo", description="'self_sft': SFT on the seed's own greedy captions, same trainer and epochs (baseline)"
    )


@dg.asset(
    group_name=OPTIMIZATION,
    code_version="train-2",
    partitions_def=ROUNDS,
    automation_condition=ROUND_AUTOMATION,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    verified_pairs: pl.DataFrame,
    unlabeled_images: pl.DataFrame,
) -> dg.Output[Checkpoint]:
    """The seed plus a DPO-trained LoRA adapter, merged (loads with plain `from_pretrained`); the adapter
    alone sits in `adapter/`. Reference log-probs are computed once per (seed, pairs, length settings)."""
    artifact_store = store.get()
    settings = DPOSettings(**config.model_dump(exclude={"optimization"}))
    settings = settings.model_copy(update={"seed": round_seed_of(context, config.seed)})
    if config.optimization == "self_sft":
        settings = settings.model_copy(update={"objective": "sft"})
    model, processor = models.load(seed_checkpoint.path)
    image_by_id = decode_images(unlabeled_images)
    if config.optimization == "self_sft":
        pairs = self_sft_pairs(model, processor, unlabeled_images, image_by_id, context.log.info)
    else:
        pairs = training_pairs(verified_pairs)
    with preflight("trained_model"):
        image_tokens_fit(
            processor,
            [image_by_id[i] for i in pairs["image_id"]],
            pairs["prompt"].to_list(),
            [max(c, r, key=len) for c, r in zip(pairs["chosen"], pairs["rejected"])],
            settings.max_length,
        )
    work = artifact_store.staging_dir()

    def reference(missing: pl.DataFrame) -> pl.DataFrame:
        return compute_reference(model, processor, missing, image_by_id, settings, work / "ref", context.log.info)

    # Per seed and length settings; pairs are looked up by content, so re-organized pairs reuse what they share.
    cache_key = config_key(
        seed_checkpoint.version, str(settings.max_length), str(settings.ld_alpha), REFERENCE_CODE_VERSION
    )
    try:  # the trainer's scratch folder goes, whether training succeeds or not
        ref = cached_reference(artifact_store, cache_key, pairs, reference)
        context.log.info(f"reference log-probs: {ref.computed} pairs computed, {ref.reused} from the cache")
        peft_model, _, result = train_dpo(
            model, processor, pairs, image_by_id, settings, work / "trainer", reference=ref.table, log=context.log.info
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    merged = artifact_store.staging_dir()
    save_trained(peft_model, processor, merged, merged / "adapter")
    curve = result.curve_table()
    return versioned(
        Checkpoint(merged),
        optimization=config.optimization,
        training_pairs=pairs.height,
        steps=result.steps,
        train_seconds=result.seconds,
        reference_logps=dg.MetadataValue.path(ref.artifact.uri),
        reference_pairs_computed=ref.computed,
        reference_pairs_reused=ref.reused,
        training_seed=settings.seed,
        training_curve=dg.MetadataValue.md(markdown_table(curve) if curve.height else "(no log entries)"),
        **consumed(seed_checkpoint=seed_checkpoint, verified_pairs=verified_pairs, unlabeled_images=unlabeled_images),
    )
