"""The embedded default's models: a bootstrap seed MLLM and a bootstrap CLIP verifier, trained here."""


from collections import Counter

import dagster as dg
import numpy as np
import polars as pl
import torch

from resources import ArtifactStoreResource
from si_assets.assets.common import BOOTSTRAP, config_key, markdown_table, memoised_checkpoint, versioned
from si_assets.modeling.bootstrap import train_seed_model
from si_assets.modeling.sft import SFTConfig
from si_assets.modeling.tiny_vlm import TinyVLMSpec
from si_assets.storage import Checkpoint, content_hash
from si_assets.verifier.clip import (
    ClipScorer,
    ClipTrainConfig,
    TinyClipSpec,
    build_tiny_clip,
    load_clip,
    retrieval_recall_at_1,
    save_clip,
    train_clip,
)
from si_assets.world import decode_png, hard_negative_caption
from si_assets.world.spec import WorldSpec

SEED_CODE_VERSION = "bootstrap-seed-1"
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
    retrieval_candidates: int = 50


def world_vocabulary(table: pl.DataFrame) -> tuple[list[str], list[str]]:
    """Object kinds and colours as the captioned data shows them (sorted: a stable order)."""
    kinds = sorted(set(table["objects"].explode().drop_nulls().to_list()))
    colours = sorted(set(table["colours"].explode().drop_nulls().to_list()))
    return kinds, colours


def cooccurring_pairs(table: pl.DataFrame) -> list[list[str]]:
    """Pairs of kinds that are each other's most frequent companion, well above independence."""
    counts: Counter = Counter()
    freq: Counter = Counter()
    for objects in table["objects"].to_list():
        freq.update(objects)
        counts.update((a, b) for a in objects for b in objects if a != b)
    n = max(1, table.height)
    best = {}
    for kind in freq:
        lift = {b: counts[(kind, b)] * n / (freq[kind] * freq[b]) for b in freq if b != kind}
        if lift:
            mate = max(sorted(lift), key=lift.get)
            if lift[mate] > 1.5:
                best[kind] = mate
    return sorted([a, b] for a, b in best.items() if best.get(b) == a and a < b)


@dg.asset(group_name=BOOTSTRAP, code_version=SEED_CODE_VERSION)
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
    kinds, colours = world_vocabulary(world_seed_train)

    def build() -> tuple[Checkpoint, dict]:
        model, processor, result = train_seed_model(world_seed_train, kinds, colours, arch, sft, log=context.log.info)
        staging = artifact_store.staging_dir()
        model.save_pretrained(staging)  # safetensors
        processor.save_pretrained(staging)
        meta = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": result.steps,
            "best_step": result.best_step,
            "best_val_loss": result.best_val_loss,
            "train_seconds": result.seconds,
            "curve": result.curve,
        }
        return Checkpoint(staging), meta

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
        training_curve=dg.MetadataValue.md(markdown_table(curve) if curve.height else "(no evaluations)"),
    )


@dg.asset(group_name=BOOTSTRAP, code_version=CLIP_CODE_VERSION)
def bootstrap_clip(
    context: dg.AssetExecutionContext,
    config: ClipBootstrapConfig,
    store: ArtifactStoreResource,
    world_clip_train: pl.DataFrame,
    world_eval: pl.DataFrame,
) -> dg.Output[Checkpoint]:
    """A tiny open_clip model trained contrastively on `clip_train` (plus hard-negative captions), saved
    as a `local-dir:` folder. Its image→text recall@1 on `eval` is reported against chance."""
    artifact_store = store.get()
    train_cfg = ClipTrainConfig(**config.model_dump(exclude={"architecture", "retrieval_candidates"}))
    arch = TinyClipSpec(**config.architecture.model_dump())
    kinds, colours = world_vocabulary(world_clip_train)
    # Hard negatives add the usual partner of an object: read the partners off the captioned data.
    partner_spec = WorldSpec(
        kinds=kinds, colours={c: [0, 0, 0] for c in colours}, cooccurrence=cooccurring_pairs(world_clip_train), max_objects=1
    )

    def build() -> tuple[Checkpoint, dict]:
        staging = artifact_store.staging_dir()
        save_clip(build_tiny_clip(arch), arch.open_clip_config(), staging)
        model, preprocess, tokenizer = load_clip(str(staging))
        rng = np.random.default_rng(train_cfg.seed)
        images = torch.stack([preprocess(decode_png(b)) for b in world_clip_train["image_png"]])
        negatives = [
            hard_negative_caption(o, c, partner_spec, rng)
            for o, c in zip(world_clip_train["objects"], world_clip_train["colours"])
        ]
        stats = train_clip(model, tokenizer, images, world_clip_train["caption"].to_list(), negatives, train_cfg, context.log.info)
        save_clip(model, arch.open_clip_config(), staging)
        scorer = ClipScorer(model, preprocess, tokenizer)
        recall = retrieval_recall_at_1(
            scorer, [decode_png(b) for b in world_eval["image_png"]], world_eval["caption"].to_list(), config.retrieval_candidates
        )
        return Checkpoint(staging), {**stats, "eval_recall_at_1": recall}

    key = config_key(config, content_hash(world_clip_train), content_hash(world_eval), CLIP_CODE_VERSION)
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
    )
