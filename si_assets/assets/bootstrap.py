"""The embedded default's models: a bootstrap seed MLLM and a bootstrap CLIP verifier, trained here."""

import dagster as dg
import polars as pl

from resources import ArtifactStoreResource
from si_assets.assets.common import BOOTSTRAP, GPU_POOL, GPU_STEP_TAGS, consumed, markdown_table, staged, versioned
from si_assets.bootstrap.clip import ClipTrainConfig, TinyClipSpec, train_bootstrap_clip
from si_assets.bootstrap.seed_model import save_seed_model
from si_assets.bootstrap.sft import SFTConfig
from si_assets.bootstrap.tiny_vlm import TinyVLMSpec
from si_assets.storage import Checkpoint, content_hash
from si_assets.storage.memo import config_key, memoised_checkpoint

SEED_CODE_VERSION = "bootstrap-seed-2"
CLIP_CODE_VERSION = "bootstrap-clip-1"


class TinyVLMConfig(dg.Config, TinyVLMSpec):
    """Sizes of the bootstrap LLaVA."""


class SeedBootstrapConfig(dg.Config, SFTConfig):
    """Training of the bootstrap seed (vision pretraining, SFT with image dropout, early stopping)."""

    architecture: TinyVLMConfig = TinyVLMConfig()


class TinyClipConfig(dg.Config, TinyClipSpec):
    """Sizes of the bootstrap CLIP."""


class ClipBootstrapConfig(dg.Config, ClipTrainConfig):
    architecture: TinyClipConfig = TinyClipConfig()


@dg.asset(group_name=BOOTSTRAP, code_version=SEED_CODE_VERSION, pool=GPU_POOL, op_tags=GPU_STEP_TAGS)
def bootstrap_seed_model(
    context: dg.AssetExecutionContext,
    config: SeedBootstrapConfig,
    store: ArtifactStoreResource,
    world_seed_train: pl.DataFrame,
) -> dg.Output[Checkpoint]:
    """A tiny `LlavaForConditionalGeneration` trained on `seed_train` until validation loss plateaus:
    competent, yet it names absent co-occurrence partners. Reused, not retrained, when config, data and
    code are unchanged."""
    artifact_store = store.get()
    sft = SFTConfig(**config.model_dump(exclude={"architecture"}))
    arch = TinyVLMSpec(**config.architecture.model_dump())

    def build() -> tuple[Checkpoint, dict]:
        with staged(artifact_store) as staging:
            return Checkpoint(staging), save_seed_model(world_seed_train, arch, sft, staging, context.log.info)

    key = config_key(config, content_hash(world_seed_train), SEED_CODE_VERSION)
    checkpoint, meta, reused = memoised_checkpoint(artifact_store, "bootstrap_seed_model", key, build)
    context.log.info(("reused" if reused else "trained") + f" bootstrap seed (key {key})")
    curve = pl.DataFrame(meta["curve"]) if meta["curve"] else pl.DataFrame()
    return versioned(
        checkpoint,
        reused=reused,
        parameters=meta["parameters"],
        steps=meta["steps"],
        best_step=meta["best_step"],
        best_val_loss=float(meta["best_val_loss"]),
        train_seconds=float(meta["train_seconds"]),
        yes_no_accuracy=float(meta["yes_no_accuracy"]),
        yes_no_yes_ratio=float(meta["yes_no_yes_ratio"]),
        yes_no_further_steps=int(meta["yes_no_further_steps"]),
        training_curve=dg.MetadataValue.md(markdown_table(curve) if curve.height else "(no evaluations)"),
        **consumed(world_seed_train=world_seed_train),
    )


@dg.asset(group_name=BOOTSTRAP, code_version=CLIP_CODE_VERSION, pool=GPU_POOL, op_tags=GPU_STEP_TAGS)
def bootstrap_clip(
    context: dg.AssetExecutionContext,
    config: ClipBootstrapConfig,
    store: ArtifactStoreResource,
    world_clip_train: pl.DataFrame,
    world_dev: pl.DataFrame,
) -> dg.Output[Checkpoint]:
    """A tiny open_clip model trained contrastively on `clip_train` (plus hard-negative captions), and with
    `object_window` also on one window per object box, saved as a `local-dir:` folder. Its image→text recall@1 on
    `dev` is reported against chance."""
    artifact_store = store.get()
    train_cfg = ClipTrainConfig(**config.model_dump(exclude={"architecture"}))
    arch = TinyClipSpec(**config.architecture.model_dump())

    def build() -> tuple[Checkpoint, dict]:
        with staged(artifact_store) as staging:
            stats = train_bootstrap_clip(
                world_clip_train, world_dev, arch, train_cfg, staging, train_cfg.retrieval_candidates, context.log.info
            )
            return Checkpoint(staging), stats

    key = config_key(config, content_hash(world_clip_train), content_hash(world_dev), CLIP_CODE_VERSION)
    checkpoint, meta, reused = memoised_checkpoint(artifact_store, "bootstrap_clip", key, build)
    chance = 1 / config.retrieval_candidates
    context.log.info(f"bootstrap CLIP recall@1 = {meta['eval_recall_at_1']:.3f} (chance {chance:.3f}); reused={reused}")
    return versioned(
        checkpoint,
        reused=reused,
        eval_recall_at_1=float(meta["eval_recall_at_1"]),
        chance_recall_at_1=chance,
        train_seconds=float(meta["seconds"]),
        final_loss=float(meta["final_loss"]),
        object_windows=int(meta.get("object_windows", 0)),
        **consumed(world_clip_train=world_clip_train, world_dev=world_dev),
    )
