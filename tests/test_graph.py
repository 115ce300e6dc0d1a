"""Materialize the whole asset graph on a small world, twice, through Dagster."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from resources import (
    ArtifactStoreResource,
    ClipVerifier,
    ComputeDevice,
    ContentAddressedIOManager,
    VisionLanguageModels,
)
from si_assets.definitions import all_assets, defs
from tests.conftest import SMALL_SPLITS

RUN_CONFIG = {
    "ops": {
        "world_splits": {"config": {"seed": 7, "splits": SMALL_SPLITS}},
        "bootstrap_seed_model": {
            "config": {"vision_pretrain_steps": 10, "max_steps": 20, "eval_every": 10, "batch_size": 8, "val_size": 16}
        },
        "bootstrap_clip": {"config": {"steps": 10, "batch_size": 16, "retrieval_candidates": 10}},
        "collected_responses": {"config": {"n_samples": 3, "n_negatives": 1, "max_new_tokens": 12}},
        "trained_model": {"config": {"epochs": 1, "batch_size": 8}},
        "eval_scores": {"config": {"pope_per_image": 1, "max_new_tokens": 12}},
    }
}


def _resources(root: Path) -> dict:
    compute = ComputeDevice(device="cpu")
    return {
        "io_manager": ContentAddressedIOManager(root=str(root)),
        "store": ArtifactStoreResource(root=str(root)),
        "compute": compute,
        "models": VisionLanguageModels(compute=compute),
        "clip": ClipVerifier(compute=compute),
    }


def test_definitions_load_with_stage_groups() -> None:
    groups = {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}
    assert groups["world_eval"] == "world"
    assert groups["bootstrap_seed_model"] == "bootstrap"
    assert groups["seed_checkpoint"] == groups["unlabeled_images"] == "collection"
    assert groups["sampled_responses"] == groups["hallucinated_negatives"] == "collection"
    assert groups["verified_pairs"] == "organization"
    assert groups["trained_model"] == "optimization"
    assert groups["eval_scores"] == "evaluation"


@pytest.mark.slow
def test_graph_materializes_and_second_run_reuses_bootstrap(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    resources = _resources(tmp_path / "store")
    first = dg.materialize(all_assets, instance=instance, resources=resources, run_config=RUN_CONFIG)
    assert first.success

    table: pl.DataFrame = first.output_for_node("eval_scores")
    assert {"metric", "seed", "trained", "delta"} <= set(table.columns)
    event = instance.get_latest_materialization_event(dg.AssetKey("eval_scores")).asset_materialization
    for metric in ("precision", "recall", "f1", "chair_s", "pope_f1"):
        seed, trained = event.metadata[f"seed/{metric}"].value, event.metadata[f"trained/{metric}"].value
        assert 0.0 <= seed <= 1.0 and 0.0 <= trained <= 1.0
        assert event.metadata[f"delta/{metric}"].value == pytest.approx(trained - seed)
    assert "| metric | seed | trained | delta |" in event.metadata["eval_table"].value

    positives = first.asset_value("sampled_responses")
    negatives = first.asset_value("hallucinated_negatives")
    n_images = SMALL_SPLITS["improve"]
    assert positives.height == 3 * n_images and negatives.height == n_images
    assert (positives["role"] == "positive").all() and (negatives["role"] == "negative").all()
    seed_version = first.asset_value("seed_checkpoint").version
    assert set(positives["model_version"]) == {seed_version}
    pairs = first.asset_value("verified_pairs")
    assert pairs.height == n_images
    pairs_meta = instance.get_latest_materialization_event(dg.AssetKey("verified_pairs")).asset_materialization
    assert sum(pairs_meta.metadata[d].value for d in ("kept", "reversed", "discarded")) == n_images
    trained = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization
    assert trained.metadata["reference_logps_reused"].value is False
    assert trained.metadata["training_pairs"].value == n_images - pairs_meta.metadata["discarded"].value

    clip = instance.get_latest_materialization_event(dg.AssetKey("bootstrap_clip")).asset_materialization
    assert 0.0 <= clip.metadata["eval_recall_at_1"].value <= 1.0

    unlabeled = first.output_for_node("unlabeled_images")
    assert set(unlabeled.columns) == {"id", "image_sha256", "prompt", "image_png"}

    second = dg.materialize(all_assets, instance=instance, resources=resources, run_config=RUN_CONFIG)
    assert second.success
    for key in ("bootstrap_seed_model", "bootstrap_clip"):
        records = instance.fetch_materializations(dg.AssetKey(key), limit=2).records
        assert records[0].asset_materialization.metadata["reused"].value is True
        assert records[1].asset_materialization.metadata["reused"].value is False
        # Same content, same data version: nothing downstream turns stale.
        versions = {r.asset_materialization.tags["dagster/data_version"] for r in records}
        assert len(versions) == 1
    # Same config and seed: bit-identical responses and pairs; the reference log-probs come from the cache.
    for key in ("sampled_responses", "hallucinated_negatives", "verified_pairs"):
        records = instance.fetch_materializations(dg.AssetKey(key), limit=2).records
        assert len({r.asset_materialization.tags["dagster/data_version"] for r in records}) == 1, key
    trained = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization
    assert trained.metadata["reference_logps_reused"].value is True

    # A baseline is configuration: only the trained model is redone, from the stored upstream versions.
    baseline_config = {"ops": {"trained_model": {"config": {"epochs": 1, "batch_size": 8, "optimization": "self_sft"}}}}
    baseline = dg.materialize(
        all_assets, selection=["trained_model"], instance=instance, resources=resources, run_config=baseline_config
    )
    assert baseline.success
    meta = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization.metadata
    assert meta["optimization"].value == "self_sft" and meta["training_pairs"].value == n_images


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["dg", "check", "defs"], ["dagster", "definitions", "validate", "-w", "workspace.yaml"]],
    ids=["dg-check-defs", "definitions-validate"],
)
def test_code_location_validates(command: list[str], tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).parent / command[0]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "SI_STORE": str(tmp_path / "store")}
    done = subprocess.run([str(exe), *command[1:]], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
