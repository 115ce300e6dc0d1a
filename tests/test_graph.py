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
    assert groups["eval_scores"] == "evaluation"


@pytest.mark.slow
def test_graph_materializes_and_second_run_reuses_bootstrap(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    resources = _resources(tmp_path / "store")
    first = dg.materialize(all_assets, instance=instance, resources=resources, run_config=RUN_CONFIG)
    assert first.success

    table: pl.DataFrame = first.output_for_node("eval_scores")
    assert {"metric", "seed"} <= set(table.columns)
    event = instance.get_latest_materialization_event(dg.AssetKey("eval_scores")).asset_materialization
    for metric in ("precision", "recall", "f1", "chair_s", "pope_f1"):
        value = event.metadata[f"seed/{metric}"].value
        assert 0.0 <= value <= 1.0
    assert "| metric | seed |" in event.metadata["eval_table"].value

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
