"""Optimization stage: DPO with a LoRA adapter on the verified pairs (or a configured baseline)."""

from pathlib import Path

import dagster as dg
import polars as pl

from resources import ArtifactStoreResource, VisionLanguageModels
from si_assets.assets.common import (
    GPU_POOL,
    GPU_STEP_TAGS,
    OPTIMIZATION,
    ROUND_AUTOMATION,
    ROUNDS,
    consumed,
    markdown_table,
    preflight,
    versioned,
)
from si_assets.optimization.distributed import result_of, torchrun_command
from si_assets.optimization.dpo import DPOResult, TrainingSettings
from si_assets.rounds.steps import train
from si_assets.storage import Checkpoint

TRAIN_CODE_VERSION = "train-3"  # train-3: yes/no probes train their answer only (probe_loss 'sft')


class TrainingConfig(dg.Config, TrainingSettings):
    """DPO (TRL + LoRA) settings, plus which optimization runs and how it is launched."""


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
    alone sits in `adapter/`. Reference log-probs are computed once per (seed, pairs, length settings). Trained
    again after a small change of the pairs, it continues this round's previous adapter (`warm_start_max_change`)."""
    artifacts = store.get()
    earlier = artifacts.head("trained_model", context.partition_key) if config.warm_start_max_change > 0 else None
    previous = artifacts.local_checkpoint(earlier) if earlier is not None else None
    with preflight("trained_model"):
        trained = train(
            config,
            models,
            artifacts,
            seed_checkpoint,
            verified_pairs,
            unlabeled_images,
            context.partition_key,
            models.compute.torch_device(),
            models.compute.torch_dtype(),
            models.trust_remote_code,
            launch=lambda job, processes: train_through_pipes(context, pipes_subprocess_client, job, processes),
            log=context.log.info,
            previous=previous,
        )
    warm = trained.warm_start
    curve = trained.result.curve_table()
    return versioned(
        trained.checkpoint,
        optimization=config.optimization,
        training_pairs=trained.pairs.height,
        steps=trained.result.steps,
        train_seconds=trained.result.seconds,
        reference_logps=dg.MetadataValue.path(trained.reference.artifact.uri),
        reference_pairs_computed=trained.reference.computed,
        reference_pairs_reused=trained.reference.reused,
        training_seed=trained.settings.seed,
        warm_start=warm.reason,
        warm_started_from=earlier.version if warm.warm and earlier is not None else "",  # its data version
        warm_start_pairs=dg.MetadataValue.json(
            {"added": warm.added, "removed": warm.removed, "replayed": warm.replayed}
        ),
        launcher=config.launcher,
        **trained.distributed,
        training_curve=dg.MetadataValue.md(markdown_table(curve) if curve.height else "(no log entries)"),
        **consumed(seed_checkpoint=seed_checkpoint, verified_pairs=verified_pairs, unlabeled_images=unlabeled_images),
    )
