"""Omission pairs: the net push of the caption pairs on each object's name, and the pairs that offset it."""

from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest

from si_assets.organization.balance import OMISSION, name_push, omission_edit, omission_pairs, omissions
from si_assets.organization.verification import VerificationSettings


def _pairs(rows: Sequence[tuple[str, str, str]], decision: str = "kept") -> pl.DataFrame:
    """Caption pairs (image id, chosen, rejected), each chosen caption scored 1 and each rejected one 0."""
    image_ids = [r[0] for r in rows]
    return pl.DataFrame(
        {
            "image_id": image_ids,
            "pair_id": [f"{i}/{k}" for k, i in enumerate(image_ids)],
            "chosen": [r[1] for r in rows],
            "rejected": [r[2] for r in rows],
            "score_chosen": [1.0] * len(rows),
            "score_rejected": [0.0] * len(rows),
            "decision": [decision] * len(rows),
            "rejected_source": ["sampled"] * len(rows),
            "task": ["caption"] * len(rows),
        }
    )


def _below_every_caption(ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    return np.full(len(texts), 0.5)


PAIRS = _pairs(
    [
        ("i0", "a red circle, a blue square.", "a red circle, a hexagon and a star."),
        ("i0", "a red circle, a blue square.", "a hexagon."),
        ("i1", "a star and a hexagon.", "a star, a hexagon and a circle."),
        ("i2", "a ring and a red hexagon.", "a ring, a star."),
        ("i3", "a ring.", "a hexagon."),
    ]
)


def test_name_push_counts_each_pair_once_per_object() -> None:
    push = name_push(_pairs([("i0", "a red circle and a blue circle.", "a circle, a star and a star.")]))
    assert push == {"circle": 0, "star": -1}
    assert name_push(PAIRS) == {"square": 2, "ring": 1, "circle": 0, "star": -2, "hexagon": -2}


def test_omissions_leave_out_one_object_at_a_time() -> None:
    assert omissions("a red circle, a blue square and a red circle.") == {
        "circle": "a blue square.",
        "square": "a red circle and a red circle.",
    }
    assert omissions("a red circle and a blue circle.") == {}  # one object: nothing left to prefer it to
    assert omissions("a star.") == {}


def test_omission_pairs_offset_the_push_down_on_each_name() -> None:
    added = omission_pairs(PAIRS, _below_every_caption, 1.0, seed=0)
    assert set(added["task"]) == {OMISSION} and set(added["rejected_source"]) == {OMISSION}
    assert set(added["decision"]) == {"kept"}
    # star and hexagon are pushed down by 2 each; the chosen captions naming them with another object: i1 and i2
    assert sorted(zip(added["pair_id"], added["rejected"])) == [
        ("i1/2/omission/hexagon", "a star."),
        ("i1/2/omission/star", "a hexagon."),
        ("i2/3/omission/hexagon", "a ring."),
    ]
    after = name_push(pl.concat([PAIRS, added]))
    assert after["hexagon"] == 0  # offset in full
    assert after["star"] == -1  # one chosen caption names a star among others: what there is
    assert {k: after[k] for k in ("square", "ring", "circle")} == {"square": 2, "ring": 1, "circle": 0}


def test_omission_pairs_offset_a_share_of_the_push() -> None:
    added = omission_pairs(PAIRS, _below_every_caption, 0.5, seed=0)
    assert sorted(added["pair_id"].str.split("/").list.last()) == ["hexagon", "star"]  # round(0.5 * 2) = 1 each
    assert omission_pairs(PAIRS, _below_every_caption, 0.2, seed=0).height == 0  # round(0.4) = 0


def test_omissions_the_verifier_does_not_score_lower_are_not_used() -> None:
    def misses_the_hexagon(ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return np.array([1.0 if "hexagon" not in t else 0.5 for t in texts])  # leaving it out costs nothing

    added = omission_pairs(PAIRS, misses_the_hexagon, 1.0, seed=0)
    assert added["pair_id"].to_list() == ["i1/2/omission/star"]
    assert (added["score_rejected"] < added["score_chosen"]).all()


def test_omission_pairs_draw_by_seed() -> None:
    many = _pairs([(f"i{k}", "a star and a ring.", "a star, a hexagon.") for k in range(10)])
    many = pl.concat([many, _pairs([(f"j{k}", "a circle.", "a ring, a hexagon.") for k in range(6)])])
    # ring: +10 - 6 = 4 up; hexagon: 16 down, nothing names it on the chosen side; star: 0
    assert omission_pairs(many, _below_every_caption, 1.0, seed=0).height == 0
    skewed = pl.concat([many, _pairs([(f"k{k}", "a circle.", "a star.") for k in range(4)])])  # star: 4 down
    first = omission_pairs(skewed, _below_every_caption, 1.0, seed=0)
    assert first.height == 4 and set(first["rejected"]) == {"a ring."}
    assert first.equals(omission_pairs(skewed, _below_every_caption, 1.0, seed=0))
    other = omission_pairs(skewed, _below_every_caption, 1.0, seed=1)
    assert set(first["image_id"]) != set(other["image_id"])


def test_the_edit_appends_omission_pairs_for_the_training_pairs() -> None:
    edit = omission_edit(1.0, seed=0)
    out = edit(PAIRS, _below_every_caption)
    assert out.head(PAIRS.height).equals(PAIRS)  # the caption pairs stay first, as the probes restate them
    assert out.height == PAIRS.height + 3
    discarded = _pairs([("i1", "a star and a hexagon.", "a star, a hexagon and a circle.")], decision="discarded")
    assert edit(discarded, _below_every_caption).height == 1  # a discarded pair pushes nothing


def test_omission_pairs_can_leave_objects_out_of_one_tasks_chosen_captions_only() -> None:
    """With a source task, the omissions come from that task's chosen captions; the push they offset is still that
    of every pair."""
    consensus = _pairs([("i4", "a star and a ring.", "a star, a ring and a hexagon.")]).with_columns(
        task=pl.lit("region"), pair_id=pl.lit("i4/0/region")
    )
    pairs = pl.concat([PAIRS, consensus])
    added = omission_pairs(pairs, _below_every_caption, 1.0, seed=0, source_task="region")
    assert added.select("pair_id", "rejected").rows() == [("i4/0/region/omission/star", "a ring.")]
    assert name_push(pairs)["star"] == -2  # the push on a star, offset from the one consensus caption that names it
    every = omission_pairs(pairs, _below_every_caption, 1.0, seed=0)
    assert set(every["image_id"]) == {"i1", "i2", "i4"}


def test_omissions_from_the_consensus_need_the_consensus_pairs() -> None:
    consensus = {"min_region_support": 0.5, "region_caption": "consensus", "region_pairs": "add"}
    assert VerificationSettings(**consensus, omission_share=1.0, omission_source="consensus").omission_source
    for other in ({"region_pairs": "cut"}, {"region_caption": "chosen"}):
        with pytest.raises(ValueError, match="omission_source='consensus' needs"):
            VerificationSettings(**{**consensus, **other}, omission_share=1.0, omission_source="consensus")


def test_omission_share_above_one_pushes_the_names_up() -> None:
    many = _pairs([(f"i{k}", "a star and a ring.", "a star, a ring, a hexagon.") for k in range(10)])
    skewed = pl.concat([many, _pairs([(f"k{k}", "a circle.", "a star.") for k in range(4)])])  # star: 4 down
    added = omission_pairs(skewed, _below_every_caption, 1.5, seed=0)
    assert added["pair_id"].str.split("/").list.last().to_list() == ["star"] * 6  # round(1.5 * 4)
    assert name_push(pl.concat([skewed, added]))["star"] == 2  # up on balance


def test_omission_share_is_bounded() -> None:
    assert VerificationSettings().omission_share == 0.0  # off by default
    assert VerificationSettings(omission_share=1.5).omission_share == 1.5
    with pytest.raises(ValueError, match="omission_share"):
        VerificationSettings(omission_share=2.5)
