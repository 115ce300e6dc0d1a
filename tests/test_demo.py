"""The demo's command line: one round's own run config, the round seed, and every config checked before anything
runs (the shipped bench configs included)."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from si_assets.automation.jobs import bootstrap_job, improvement_round_job
from si_assets.automation.runner import RunConfigError, check_run_config
from si_assets.definitions import defs
from si_assets.demo import SEEDED_OPS, main, per_round_configs, with_round_seed

BENCH_CONFIGS = sorted((Path(__file__).parents[1] / "bench" / "configs").glob("*.yaml"))
ROUND_JOB = defs.resolve_job_def(improvement_round_job.name)
BOOTSTRAP_JOB = defs.resolve_job_def(bootstrap_job.name)


def test_round_configs_map_round_numbers_to_their_run_config(tmp_path: Path) -> None:
    third = tmp_path / "round3.yaml"
    third.write_text("ops:\n  verified_pairs:\n    config:\n      omission_share: 1.0\n")
    (tmp_path / "empty.yaml").write_text("")
    configs = per_round_configs([f"3={third}", f"1={tmp_path / 'empty.yaml'}"])
    assert configs == {3: {"ops": {"verified_pairs": {"config": {"omission_share": 1.0}}}}, 1: {}}
    assert per_round_configs([]) == {}
    for bad in ("three=x.yaml", "0=x.yaml", "3=", "3"):
        with pytest.raises(ValueError, match="expected N=YAML"):
            per_round_configs([bad])


def test_round_seed_seeds_sampling_verification_and_training_and_keeps_the_rest() -> None:
    config = {"ops": {"verified_pairs": {"config": {"omission_share": 1.0, "seed": 0}}}, "resources": {"x": 1}}
    seeded = with_round_seed(config, 2)
    assert seeded["resources"] == {"x": 1}
    assert seeded["ops"]["verified_pairs"]["config"] == {"omission_share": 1.0, "seed": 2}
    assert {op: seeded["ops"][op]["config"]["seed"] for op in SEEDED_OPS} == dict.fromkeys(SEEDED_OPS, 2)
    assert config["ops"]["verified_pairs"]["config"]["seed"] == 0  # the caller's config is left as it was
    assert with_round_seed({}, 1)["ops"]["trained_model"] == {"config": {"seed": 1}}


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_bench_config_fits_its_job(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load(path.read_text())
    # a verifier folder is one a bench script writes (bench/region_clip.py); the settings check that it exists
    verifier = config["ops"].get("verified_pairs", {}).get("config", {}).get("verifier")
    if verifier is not None and "/" in verifier:
        monkeypatch.chdir(tmp_path)
        (tmp_path / verifier).mkdir(parents=True)
    bootstrap_ops = {node.name for node in BOOTSTRAP_JOB.graph.nodes}
    job = BOOTSTRAP_JOB if set(config["ops"]) <= bootstrap_ops else ROUND_JOB
    check_run_config(job, config, path.name)


@pytest.mark.parametrize(
    ("ops", "named"),
    [
        ({"trained_model": {"config": {"objectiv": "sft"}}}, "objectiv"),  # not a field
        ({"trained_model": {"config": {"objective": "ppo"}}}, "objective"),  # not one of its values
        ({"verified_pairs": {"config": {"omission_share": 3.0}}}, "omission_share"),  # past its range (≤ 2)
        ({"collected_responses": {"config": {"n_samples": 2, "n_negatives": 4}}}, "n_negatives"),  # inside a graph
    ],
)
def test_a_config_that_does_not_fit_is_refused_with_the_field_named(ops: dict, named: str) -> None:
    with pytest.raises(RunConfigError, match=named):
        check_run_config(ROUND_JOB, {"ops": ops}, "round.yaml")


def test_the_demo_refuses_a_bad_round_config_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SI_STORE", str(tmp_path / "store"))
    third = tmp_path / "round3.yaml"
    third.write_text("ops:\n  verified_pairs:\n    config:\n      omission_share: 3.0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--rounds", "3", "--round-config", f"3={third}"])
    assert exit_info.value.code == 2
    assert "--round-config 3" in capsys.readouterr().err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs_count() == 0
    assert not (tmp_path / "store").exists()
