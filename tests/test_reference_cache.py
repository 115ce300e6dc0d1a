"""Reference log-probs cached per pair: a re-organized pair set computes only the pairs it has not seen."""

from pathlib import Path

import polars as pl
import pytest

from si_assets.optimization.reference_cache import cached_reference, pair_key
from si_assets.storage import ArtifactStore


def pairs(*rows: tuple[str, str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"pair_id": f"{i}/0", "image_id": i, "prompt": "Describe.", "chosen": c, "rejected": r} for i, c, r in rows]
    )


class Reference:
    """A stand-in reference model with a known answer per pair: the log-prob is minus the text length."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, missing: pl.DataFrame) -> pl.DataFrame:
        self.seen += missing["pair_id"].to_list()
        return missing.select(
            "pair_id",
            ref_chosen_logps=-pl.col("chosen").str.len_chars().cast(pl.Float64),
            ref_rejected_logps=-pl.col("rejected").str.len_chars().cast(pl.Float64),
        )


def test_only_unseen_pairs_are_computed_and_values_follow_content(tmp_path: Path) -> None:
    store, reference = ArtifactStore(tmp_path), Reference()
    first = pairs(("a", "a red circle.", "a red circle and a square."), ("b", "a star.", "a star and a ring."))
    one = cached_reference(store, "seed-v1", first, reference)
    assert (one.computed, one.reused) == (2, 0) and reference.seen == ["a/0", "b/0"]
    assert one.table["ref_chosen_logps"].to_list() == [-13.0, -7.0]

    # A new margin drops b and a reversal swaps c's sides: only c is new.
    second = pairs(("a", "a red circle.", "a red circle and a square."), ("c", "a ring.", "a cross."))
    two = cached_reference(store, "seed-v1", second, reference)
    assert (two.computed, two.reused) == (1, 1) and reference.seen[2:] == ["c/0"]
    assert two.table.sort("pair_id").rows() == [("a/0", -13.0, -26.0), ("c/0", -7.0, -8.0)]
    assert cached_reference(store, "seed-v1", first, reference).computed == 0  # everything is known now
    assert cached_reference(store, "seed-v2", first, reference).computed == 2  # another seed, another cache
    assert pair_key("a", "p", "x", "y") != pair_key("a", "p", "y", "x")


def test_a_reference_that_skips_pairs_is_an_error(tmp_path: Path) -> None:
    def lossy(missing: pl.DataFrame) -> pl.DataFrame:
        return Reference()(missing.head(1))

    with pytest.raises(ValueError, match="no log-probs for 1 pairs"):
        cached_reference(ArtifactStore(tmp_path), "k", pairs(("a", "x", "y"), ("b", "x", "z")), lossy)
    assert ArtifactStore(tmp_path).read_pointer("memo/reference_logps-k") is None  # nothing half-written
