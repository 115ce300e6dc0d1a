"""Warm starts after a small change of a round's pairs: when the previous adapter may continue, and on which rows."""

from pathlib import Path

import polars as pl
import pytest

from si_assets.optimization.warm_start import TRAINED_ON, TrainedOn, plan_warm_start

SEED, SETTINGS = "seed-v1", "settings-k1"


def _pairs(ids: range, prefix: str = "") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "pair_id": [f"img{i}/0" for i in ids],
            "image_id": [f"img{i}" for i in ids],
            "prompt": ["Describe the image."] * len(ids),
            "chosen": [f"{prefix}a cat {i}." for i in ids],
            "rejected": [f"a dog {i}." for i in ids],
        }
    )


def _previous(tmp_path: Path, pairs: pl.DataFrame, seed: str = SEED, settings: str = SETTINGS) -> Path:
    adapter = tmp_path / "adapter"
    adapter.mkdir(exist_ok=True)
    TrainedOn.of(seed, settings, pairs).write(adapter)
    return adapter


def _plan(pairs: pl.DataFrame, adapter: Path | None, max_change: float = 0.25, seed: int = 0):
    return plan_warm_start(pairs, TrainedOn.of(SEED, SETTINGS, pairs), adapter, max_change, seed, 1e-4)


def test_the_record_round_trips_and_keys_pairs_by_content(tmp_path: Path) -> None:
    pairs = _pairs(range(5))
    adapter = _previous(tmp_path, pairs)
    record = TrainedOn.read(adapter)
    assert record == TrainedOn.of(SEED, SETTINGS, pairs)
    renumbered = pairs.with_columns(pair_id=pl.format("{}/7", "image_id"))  # same content, other positions
    assert TrainedOn.of(SEED, SETTINGS, renumbered).pair_keys == record.pair_keys
    assert TrainedOn.read(tmp_path) is None  # no record: not an adapter this product trained


def test_a_few_removed_pairs_replay_as_many_unchanged_ones(tmp_path: Path) -> None:
    old = _pairs(range(100))
    new = old.filter(~pl.col("image_id").is_in([f"img{i}" for i in range(10)]))  # a stricter margin drops 10
    plan = _plan(new, _previous(tmp_path, old))
    assert plan.warm and plan.adapter_dir == tmp_path / "adapter"
    assert (plan.added, plan.removed, plan.replayed) == (0, 10, 10)
    assert plan.rows.height == 10 and set(plan.rows["pair_id"]) <= set(new["pair_id"])
    assert "10.0% of the pairs changed" in plan.reason
    assert plan.learning_rate == 1e-4 and plan.reason.endswith("at learning rate 0.0001")


def test_added_pairs_are_all_trained_with_as_many_replayed(tmp_path: Path) -> None:
    old = _pairs(range(100))
    new = pl.concat([old.filter(pl.col("image_id") != "img0"), _pairs(range(100, 106))])  # 6 in, 1 out
    plan = _plan(new, _previous(tmp_path, old))
    assert (plan.added, plan.removed, plan.replayed) == (6, 1, 6)
    rows = set(plan.rows["pair_id"])
    assert {f"img{i}/0" for i in range(100, 106)} <= rows and len(rows) == 12
    again = _plan(new, _previous(tmp_path, old))
    assert again.rows.equals(plan.rows)  # the replay draw follows the seed
    other = _plan(new, _previous(tmp_path, old), seed=1)
    assert not other.rows.equals(plan.rows)


def test_a_changed_response_counts_as_one_added_and_one_removed(tmp_path: Path) -> None:
    old = _pairs(range(20))
    new = old.with_columns(chosen=pl.when(pl.col("image_id") == "img3").then(pl.lit("a bird.")).otherwise("chosen"))
    plan = _plan(new, _previous(tmp_path, old))
    assert (plan.added, plan.removed) == (1, 1) and "img3/0" in set(plan.rows["pair_id"])


@pytest.mark.parametrize(
    ("seed", "settings", "reason"),
    [("seed-v2", SETTINGS, "another seed"), (SEED, "settings-k2", "other settings")],
)
def test_an_adapter_of_another_seed_or_settings_is_not_continued(
    tmp_path: Path, seed: str, settings: str, reason: str
) -> None:
    old = _pairs(range(100))
    plan = _plan(old.head(95), _previous(tmp_path, old, seed, settings))
    assert not plan.warm and reason in plan.reason


def test_large_changes_unchanged_pairs_and_no_predecessor_train_from_the_seed(tmp_path: Path) -> None:
    old = _pairs(range(100))
    adapter = _previous(tmp_path, old)
    assert not _plan(old, adapter).warm  # the same pairs: trained again from the seed, reproducibly
    large = _plan(old.head(60), adapter)
    assert not large.warm and "40% of the pairs changed" in large.reason
    assert _plan(old.head(60), adapter, max_change=0.5).warm
    assert not _plan(old.head(95), adapter, max_change=0.0).warm  # off
    assert not _plan(old.head(95), None).warm
    (adapter / TRAINED_ON).unlink()
    assert "no record" in _plan(old.head(95), adapter).reason
