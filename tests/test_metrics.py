import pytest

from si_assets.evaluation.metrics import (
    ObjectVocabulary,
    build_pope_questions,
    caption_scores,
    parse_yes_no,
    pope_scores,
)


@pytest.fixture
def vocab() -> ObjectVocabulary:
    return ObjectVocabulary(
        {"dining table": ["table"], "knife": ["knives"], "fork": [], "person": ["man", "woman", "people"]}
    )


def test_mentions_use_synonyms_plurals_and_longest_match(vocab: ObjectVocabulary) -> None:
    assert vocab.mentions("Two knives lie on a dining table next to a man.") == ["knife", "dining table", "person"]
    assert vocab.mentions("A table. Another table, and forks!") == ["dining table", "fork"]
    assert vocab.mentions("nothing here") == []


def test_conflicting_synonyms_are_refused() -> None:
    with pytest.raises(ValueError, match="names both"):
        ObjectVocabulary({"a": ["thing"], "b": ["thing"]})


def test_chair_precision_recall_by_hand(vocab: ObjectVocabulary) -> None:
    captions = [
        "a knife and a fork on a table.",  # truth: knife, dining table -> fork hallucinated
        "a man.",  # truth: person, fork -> correct, fork missed
        "a fork.",  # truth: fork -> correct
    ]
    truths = [["knife", "dining table"], ["person", "fork"], ["fork"]]
    s = caption_scores(captions, truths, vocab)
    # mentions: 3 + 1 + 1 = 5, hallucinated: 1  -> CHAIR_i = 0.2, precision 0.8
    assert s.chair_i == pytest.approx(0.2)
    assert s.precision == pytest.approx(0.8)
    # ground truth 2 + 2 + 1 = 5, covered 2 + 1 + 1 = 4
    assert s.recall == pytest.approx(0.8)
    assert s.f1 == pytest.approx(0.8)
    assert s.chair_s == pytest.approx(1 / 3)
    assert s.mentions_per_caption == pytest.approx(5 / 3)


def test_caption_scores_refuse_bad_input(vocab: ObjectVocabulary) -> None:
    with pytest.raises(ValueError):
        caption_scores(["a"], [], vocab)
    with pytest.raises(ValueError):
        caption_scores([], [], vocab)


def test_pope_questions_are_balanced_and_follow_each_strategy() -> None:
    objects = ["circle", "square", "star", "ring", "cross"]
    ids = [f"i{n}" for n in range(6)]
    # square almost always with circle; star is the most frequent object overall
    truths = [
        ["circle", "square"],
        ["circle", "square", "star"],
        ["circle", "square"],
        ["star"],
        ["star", "ring"],
        ["circle"],
    ]
    qs = build_pope_questions(ids, truths, objects, per_image=1, seed=0)
    for strategy in ("random", "popular", "adversarial"):
        mine = [q for q in qs if q.strategy == strategy]
        assert sum(q.label for q in mine) == sum(not q.label for q in mine) == len(ids)
        for q in mine:
            truth = truths[ids.index(q.image_id)]
            assert (q.object in truth) == q.label
    adversarial_i5 = [q.object for q in qs if q.strategy == "adversarial" and q.image_id == "i5" and not q.label]
    assert adversarial_i5 == ["square"]  # circle's usual companion
    popular_i0 = [q.object for q in qs if q.strategy == "popular" and q.image_id == "i0" and not q.label]
    assert popular_i0 == ["star"]  # the most frequent absent object


def test_pope_scores_by_hand() -> None:
    labels = [True, True, False, False]
    answers = [True, None, True, False]  # None counts as "no"
    s = pope_scores(labels, answers)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(0.5)
    assert s["yes_ratio"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("Yes, there is.", True), ("no.", False), ("There is not a cat.", False), ("a red circle", None)],
)
def test_parse_yes_no(answer: str, expected: bool | None) -> None:
    assert parse_yes_no(answer) is expected
