"""The demo's command line: one round's own run config."""

from pathlib import Path

import pytest

from si_assets.demo import per_round_configs


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
