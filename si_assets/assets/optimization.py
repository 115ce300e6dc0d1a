"""Optimization stage: DPO with a LoRA adapter on the verified pairs (or a configured baseline)."""

import shutil
from pathlib import Path
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
from si_assets.modeling.preflight import image_tokens_fit, processes_fit
from si_assets.optimization.distributed import prepare_job, result_of, torchrun_command
from si_assets.optimization.dpo import (
    DPOResult,
    DPOSettings,
    as_trained,
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
TRAIN_CODE_VERSION = "train-3"  # train-3: yes/no probes train their answer only (probe_loss 'sft')


class TrainingConfig(dg.Config, DPOSettings):
    """DPO (TRL + LoRA) settings, plus which optimization runs."""

    optimization: Literal["dpo", "self_sft"] = Field(
        "dpo", description="'self_sft': SFT on the seed's own greedy captions, same trainer and epochs (baseline)"
    )
    launcher: Literal["in_process", "torchrun"] = Field(
        "in_process",
        description="'torchrun': data-parallel training in `processes` worker processes launched through Dagster "
        "Pipes (one per GPU; gloo on CPU); the global batch stays `batch_size`",
    )
    processes: int = Field(2, ge=1, description="torchrun workers, with launcher 'torchrun'")


def train_through_pipes(
    context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient, job: Path, processes: int
) -> tuple[DPOResult, dict]:
    """torchrun with `processes` workers on the job file; their rank 0 logs into this run and reports the result."""
    invocation = pipes.run(command=torchrun_command(job, processes), context=context.op_execution_context)
    report = invocation.get_custom_messages()[-1]
    return result_of(report), {"world_size": report["world_size"], "backend": report["backend"]}


@dg.asset(
    group_name=OPTIMIZATION,
    code_version=TRAIN_CODE_VERSION,
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
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.Output[Checkpoint]:
    """The seed plus a DPO-trained LoRA adapter, merged (loads with plain `from_pretrained`); the adapter
    alone sits in `adapter/`. Reference log-probs are computed once per (seed, pairs, length settings)."""
    artifact_store = store.get()
    settings = DPOSettings(**config.model_dump(exclude={"optimization", "launcher", "processes"}))
    settings = settings.model_copy(update={"seed": round_seed_of(context, config.seed)})
    if config.optimization == "self_sft":
        settings = settings.model_copy(update={"objective": "sft"})
    model, processor = models.load(seed_checkpoint.path)
    image_by_id = decode_images(unlabeled_images)
    if config.optimization == "self_sft":
        pairs = self_sft_pairs(model, processor, unlabeled_images, image_by_id, context.log.info)
    else:
        pairs = as_trained(training_pairs(verified_pairs), settings)
    with preflight("trained_model"):
        image_tokens_fit(
            processor,
            [image_by_id[i] for i in pairs["image_id"]],
            pairs["prompt"].to_list(),
            [max(c, r, key=len) for c, r in zip(pairs["chosen"], pairs["rejected"])],
            settings.max_length,
        )
        if config.launcher == "torchrun":
            processes_fit(config.processes, models.compute.torch_device())
    work = artifact_store.staging_dir()

    def reference(missing: pl.DataFrame) -> pl.DataFrame:
        return compute_reference(model, processor, missing, image_by_id, settings, work / "ref", context.log.info)

    # Per seed and length settings; pairs are looked up by content, so re-organized pairs reuse what they share.
    cache_key = config_key(
        seed_checkpoint.version, str(settings.max_length), str(settings.ld_alpha), REFERENCE_CODE_VERSION
    )
    merged = artifact_store.staging_dir()
    try:  # the trainer's scratch folder goes, whether training succeeds or not
        ref = cached_reference(artifact_store, cache_key, pairs, reference)
        context.log.info(f"reference log-probs: {ref.computed} pairs computed, {ref.reused} from the cache")
        if config.launcher == "torchrun":
            del model  # the workers load their own copies
            job = prepare_job(
                seed_checkpoint.path,
                pairs,
                unlabeled_images,
                ref.table,
                settings,
                config.processes,
                merged,
                work / "distributed",
                models.compute.torch_device(),
                models.compute.torch_dtype(),
                models.trust_remote_code,
            )
            result, distributed = train_through_pipes(context, pipes_subprocess_client, job, config.processes)
        else:
            peft_model, _, result = train_dpo(
                model, processor, pairs, image_by_id, settings, work / "trainer", ref.table, context.log.info
            )
            save_trained(peft_model, processor, merged, merged / "adapter")
            distributed = {}
    except BaseException:
        shutil.rmtree(merged, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
        launcher=config.launcher,
        **distributed,
        training_curve=dg.MetadataValue.md(markdown_table(curve) if curve.height else "(no log entries)"),
        **consumed(seed_checkpoint=seed_checkpoint, verified_pairs=verified_pairs, unlabeled_images=unlabeled_images),
    )
