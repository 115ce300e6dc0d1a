"""Yes/no probe pairs: caption pairs restated per object, judge-free."""

import polars as pl
import pytest

from si_assets.organization.probes import NO, YES, mentioned_objects, probe_pairs
from si_assets.organization.verification import (
    DISCARDED,
    KEPT,
    REVERSED,
    PairRule,
    decision_counts,
    organize_pairs,
    training_pairs,
)


def test_objects_are_the_head_nouns_of_noun_phrase_segments() -> None:
    assert mentioned_objects("a red circle, two blue squares and a star.") == ["circle", "square", "star"]
    assert mentioned_objects("a circle and a red circle.") == ["circle"]  # each object once
    # a clause is not a mention: it asks nothing (free prose is out of reach of this rule)
    assert mentioned_objects("the picture shows a man riding a horse on a beach.") == []
    assert mentioned_objects("") == []


def _pairs() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "chosen": ["a red circle and a star.", "a red circle.", "a cross."],
            "rank": [0, 1, 0],
            # image a: only the rejected responses name a square; the star a chosen one names is not asked with 'no.'
            "rejected": ["a red circle and a square.", "a star and a green square.", "a cross and a ring."],
        }
    )


def test_the_best_chosen_objects_answer_yes_and_objects_only_the_rejected_name_answer_no() -> None:
    probes = probe_pairs(_pairs(), per_image=5)
    got = {(i, o): (c, r) for i, o, c, r in probes.select("image_id", "object", "chosen", "rejected").iter_rows()}
    assert got == {
        ("a", "circle"): (YES, NO),
        ("a", "star"): (YES, NO),
        ("a", "square"): (NO, YES),
        ("b", "cross"): (YES, NO),
        ("b", "ring"): (NO, YES),
    }
    assert probes.filter(pl.col("object") == "ring")["prompt"].item() == "Is there a ring in the image?"
    assert set(probes["pair_id"]) == {
        "a/probe/circle",
        "a/probe/star",
        "a/probe/square",
        "b/probe/cross",
        "b/probe/ring",
    }
    assert probes["answer"].to_list() == probes["chosen"].to_list()


def test_per_image_caps_the_questions_alternating_answers_with_a_seeded_draw() -> None:
    for seed in range(20):
        two = probe_pairs(_pairs(), per_image=2, seed=seed)
        assert two.group_by("image_id", "answer").len()["len"].to_list() == [1] * 4  # one yes, one no per image
        one = probe_pairs(_pairs(), per_image=1, seed=seed)
        assert one["image_id"].to_list() == ["a", "b"]
        assert one.equals(probe_pairs(_pairs(), per_image=1, seed=seed))  # the same seed, the same draw
    drawn = {tuple(probe_pairs(_pairs(), per_image=1, seed=s)["object"]) for s in range(20)}
    assert {o for objects in drawn for o in objects} == {"circle", "star", "square", "cross", "ring"}
    assert probe_pairs(_pairs(), per_image=0).height == 0


def _scored() -> pl.DataFrame:
    """Two images, one positive and one negative each; image b's pair falls inside the margin."""
    rows = [
        ("a", "positive", "a red circle and a star.", 0.40),
        ("a", "negative", "a red circle and a square.", 0.10),
        ("b", "positive", "a cross.", 0.20),
        ("b", "negative", "a cross and a ring.", 0.19),
    ]
    return pl.DataFrame(
        [
            {"image_id": i, "prompt": "Describe the image.", "role": r, "sample": 0, "h": 0.1, "seed": 0, "response": t,
             "score": s}
            for i, r, t, s in rows
        ],
        schema_overrides={"seed": pl.UInt64, "sample": pl.Int32},
    )  # fmt: skip


def test_probes_follow_the_caption_pairs_that_train_and_leave_the_rule_counts_alone() -> None:
    pairs = organize_pairs(
        _scored(), PairRule.plain(margin=0.05, probes_per_image=3), lambda ids, texts: [0.0] * len(texts)
    )
    assert decision_counts(pairs) == {KEPT: 1, REVERSED: 0, DISCARDED: 1}
    probes = pairs.filter(pl.col("task") == "probe")
    # b's caption pair was discarded: nothing of it is restated
    assert set(probes["image_id"]) == {"a"} and sorted(probes["object"]) == ["circle", "square", "star"]
    assert set(probes["decision"]) == {KEPT} and set(probes["rejected_source"]) == {"probe"}
    assert training_pairs(pairs).height == 1 + 3
    without = organize_pairs(_scored(), PairRule.plain(margin=0.05), lambda ids, texts: [0.0] * len(texts))
    assert set(without["task"]) == {"caption"}
    with pytest.raises(ValueError, match="probes_per_image"):
        PairRule(probes_per_image=-1)
    assert without.drop("task").equals(pairs.filter(pl.col("task") == "caption").select(without.drop("task").columns))
