"""The demo's command line: one round's own run config, the round seed."""

from pathlib import Path

import pytest

from si_assets.demo import SEEDED_OPS, per_round_configs, with_round_seed


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
