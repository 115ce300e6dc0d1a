"""Bootstrap intervals: the point estimate inside, the width shrinking with images, and paired differences."""

import numpy as np
import pytest

from si_assets.evaluation.amber import AMBER_METRICS
from si_assets.evaluation.chair import Chair
from si_assets.evaluation.metrics import POPE_STRATEGIES, ObjectVocabulary, caption_counts, caption_scores, pope_scores
from si_assets.evaluation.uncertainty import (
    CAPTION_COUNTS,
    INTERVAL_METRICS,
    POPE_COUNTS,
    bootstrap_weights,
    intervals,
    metrics_of,
    paired_delta_intervals,
    standard_error,
)


def _counts(images: int, hallucination: float, seed: int) -> dict[str, np.ndarray]:
    """Per-image counts of a model that names 3 objects per image, each wrong with probability `hallucination`,
    and answers 4 POPE questions per strategy, each right with probability 1 - hallucination."""
    rng = np.random.default_rng(seed)
    wrong = rng.binomial(3, hallucination, images)
    counts = {
        "n_mentions": np.full(images, 3.0),
        "n_hallucinated_mentions": wrong.astype(float),
        "n_mentioned": np.full(images, 3.0),
        "n_hallucinated": wrong.astype(float),
        "n_covered": (3 - wrong).astype(float),
        "n_truth": np.full(images, 4.0),
    }
    for strategy in POPE_STRATEGIES:
        right_yes, right_no = rng.binomial(2, 1 - hallucination, images), rng.binomial(2, 1 - hallucination, images)
        counts |= {
            f"pope_{strategy}_tp": right_yes.astype(float),
            f"pope_{strategy}_fn": (2 - right_yes).astype(float),
            f"pope_{strategy}_tn": right_no.astype(float),
            f"pope_{strategy}_fp": (2 - right_no).astype(float),
        }
    return counts


@pytest.mark.parametrize("finder", ["world", "chair"])
def test_a_row_of_ones_is_the_metric_as_caption_and_pope_scores_compute_it(finder: str) -> None:
    kinds = ["circle", "square", "star"]
    vocab = ObjectVocabulary.from_kinds(kinds) if finder == "world" else Chair([[k] for k in kinds])
    captions = ["a circle and a square.", "a star.", "a square and a star and a circle.", "a star and a star."]
    truths = [["circle"], ["star", "square"], ["square"], ["circle"]]
    expected = caption_scores(captions, truths, vocab)
    per_caption = [caption_counts(vocab.find(c), t) for c, t in zip(captions, truths)]
    counts = {name: np.array([c[name] for c in per_caption], float) for name in CAPTION_COUNTS}
    labels, answers = [True, False, True, False], [True, True, False, None]
    expected_pope = pope_scores(labels, answers)
    for strategy in POPE_STRATEGIES[:2]:  # one question per image, the same in the two strategies asked
        counts[f"pope_{strategy}_tp"] = np.array([y and bool(a) for y, a in zip(labels, answers)], float)
        counts[f"pope_{strategy}_fp"] = np.array([(not y) and bool(a) for y, a in zip(labels, answers)], float)
        counts[f"pope_{strategy}_fn"] = np.array([y and not a for y, a in zip(labels, answers)], float)
        counts[f"pope_{strategy}_tn"] = np.array([not y and not a for y, a in zip(labels, answers)], float)
    counts |= {f"pope_{POPE_STRATEGIES[2]}_{c}": np.zeros(4) for c in ("tp", "fp", "fn", "tn")}
    point = {k: float(v[0]) for k, v in metrics_of(counts, np.ones((1, 4))).items()}
    for name in ("precision", "recall", "f1", "chair_i", "chair_s"):
        assert point[name] == pytest.approx(getattr(expected, name))
    for name, value in expected_pope.items():
        assert point[f"pope_{name}"] == pytest.approx(value)
        assert point[f"pope_{POPE_STRATEGIES[0]}_{name}"] == pytest.approx(value)
    assert not any(k.startswith(f"pope_{POPE_STRATEGIES[2]}") for k in point)  # nobody asked: no metrics of its own
    # the world counts each object once per caption; CHAIR counts the last caption's two stars as two mentions
    assert expected.chair_i == pytest.approx(4 / 7 if finder == "world" else 5 / 8)
    assert expected.precision == pytest.approx(3 / 7) and expected.recall == pytest.approx(3 / 5)


def test_intervals_hold_the_estimate_and_shrink_with_more_images() -> None:
    small, large = _counts(100, 0.2, seed=10), _counts(1600, 0.2, seed=11)
    for counts in (small, large):
        point = {k: float(v[0]) for k, v in metrics_of(counts, np.ones((1, len(counts["n_mentioned"])))).items()}
        bounds = intervals(counts, seed=1)
        assert set(bounds) == set(INTERVAL_METRICS) - set(AMBER_METRICS)  # AMBER's come with AMBER's counts
        for name, (low, high) in bounds.items():
            assert low <= point[name] <= high
    width = {n: intervals(c, seed=1)["precision"] for n, c in (("small", small), ("large", large))}
    ratio = (width["small"][1] - width["small"][0]) / (width["large"][1] - width["large"][0])
    assert ratio == pytest.approx(4.0, rel=0.3)  # 16x the images: a quarter of the width
    # 3 objects per image, each wrong with p .2: SE = sqrt(.2 * .8 / (3 n))
    assert standard_error(large) == pytest.approx(np.sqrt(0.16 / (3 * 1600)), rel=0.15)


def test_a_paired_difference_is_sharper_than_two_separate_intervals() -> None:
    before = _counts(400, 0.2, seed=12)
    after = {k: v.copy() for k, v in before.items()}
    fixed = np.flatnonzero(before["n_hallucinated"] > 0)[::4]  # a quarter of the images with an error lose one
    after["n_hallucinated"][fixed] -= 1
    after["n_covered"][fixed] += 1
    gain = float(
        metrics_of(after, np.ones((1, 400)))["precision"][0] - metrics_of(before, np.ones((1, 400)))["precision"][0]
    )
    low, high = paired_delta_intervals(before, after, seed=2)["precision"]
    assert 0 < low <= gain <= high  # a small, consistent gain is resolved
    separate = intervals(before, seed=2)["precision"]
    assert high - low < (separate[1] - separate[0]) / 2
    with pytest.raises(ValueError, match="same images"):
        paired_delta_intervals(before, _counts(300, 0.2, seed=0))


def test_weights_are_seeded_resamples_of_every_image_count() -> None:
    w = bootstrap_weights(50, resamples=20, seed=3)
    assert w.shape == (20, 50) and (w.sum(axis=1) == 50).all()
    assert (w == bootstrap_weights(50, resamples=20, seed=3)).all()
    with pytest.raises(ValueError):
        bootstrap_weights(0)
    assert len(CAPTION_COUNTS) == 6 and len(POPE_COUNTS) == 12
