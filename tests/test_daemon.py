"""The automation sensor for real: a `dagster-daemon` over a persistent instance notices a `margin` change
and launches the round's downstream runs itself (trained_model, eval_scores), never re-sampling."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from si_assets.automation.runner import run_bootstrap, run_round
from si_assets.definitions import build_definitions, build_resources
from tests.test_graph import BOOTSTRAP_CONFIG, PASS_GATE, round_config

REPO = Path(__file__).resolve().parents[1]
SECONDS_TO_WAIT = 300  # a generous bound on a busy CI machine; the test measures nothing with it


def wait_for(condition, what: str, daemon: subprocess.Popen, log: Path):
    deadline = time.monotonic() + SECONDS_TO_WAIT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()[-3000:]}"
        time.sleep(1)
    raise AssertionError(f"gave up waiting for {what}; daemon log:\n{log.read_text()[-3000:]}")


def materializations(instance: dg.DagsterInstance, asset: str, partition: str) -> list:
    filt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition])
    return instance.fetch_materializations(filt, limit=100).records


def automation_ticks(instance: dg.DagsterInstance) -> int:
    states = [s for s in instance.all_instigator_state() if s.name == "round_automation"]
    return sum(len(instance.get_ticks(s.instigator_origin_id, s.selector_id)) for s in states)


@pytest.mark.slow
def test_daemon_rematerializes_downstream_of_a_margin_change(tmp_path: Path) -> None:
    home, store = tmp_path / "dagster_home", tmp_path / "store"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SI_STORE": str(store),
        "SI_AUTOMATION_INTERVAL_S": "5",
        "HF_HUB_OFFLINE": "1",
    }
    key = "round-0001"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        defs = build_definitions(build_resources(str(store), device="cpu"))
        run_bootstrap(defs, instance, BOOTSTRAP_CONFIG)
        run_round(defs, instance, key, round_config(PASS_GATE))

        log = tmp_path / "daemon.log"
        with open(log, "w") as out:
            daemon = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one signal stops the daemon and the code server it spawns
            )
        try:
            # Change the pairs only after the sensor's first tick, so the change is news to it.
            wait_for(lambda: automation_ticks(instance) > 0, "the automation sensor's first tick", daemon, log)
            sampled = len(materializations(instance, "sampled_responses", key))
            trained = len(materializations(instance, "trained_model", key))
            job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("verified_pairs")])
            assert job.execute_in_process(
                instance=instance,
                partition_key=key,
                asset_selection=[dg.AssetKey("verified_pairs")],
                run_config={"ops": {"verified_pairs": {"config": {"margin": 0.02}}}},
            ).success

            def evaluated_after_change():
                records = materializations(instance, "eval_scores", key)
                return len(materializations(instance, "trained_model", key)) > trained and len(records) > 1

            wait_for(evaluated_after_change, "automation to retrain and re-evaluate", daemon, log)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)

        new_model = materializations(instance, "trained_model", key)[0]
        run = instance.get_run_by_id(new_model.run_id)
        assert run.tags.get("dagster/from_automation_condition") == "true", run.tags
        assert run.tags.get("dagster/sensor_name") == "round_automation", run.tags
        pairs_version = materializations(instance, "verified_pairs", key)[0].asset_materialization.metadata["path"]
        consumed = new_model.asset_materialization.metadata["input/verified_pairs"].value
        assert pairs_version.value.endswith(consumed)
        assert len(materializations(instance, "sampled_responses", key)) == sampled  # no re-sampling
