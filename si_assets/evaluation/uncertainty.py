"""How sure a metric is: bootstrap intervals over the evaluation images (Dagster-free).

Every headline metric is a function of per-image counts (mentions and hallucinated mentions; mentioned,
hallucinated and covered objects; POPE's true/false positives and negatives per strategy; on AMBER, the recognised
likely hallucinations and each yes/no question's truth × answer per kind), so a bootstrap resample
is a vector of image weights and every metric of every resample is one matrix product. A difference between two
models is resampled *paired*: the same images weigh the same in both, which is what makes a small gain on shared
images visible above the image noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from si_assets.evaluation.amber import AMBER_COUNTS, AMBER_METRICS, amber_metrics
from si_assets.evaluation.metrics import CAPTION_COUNTS, POPE_STRATEGIES, harmonic_mean, ratio

POPE_COUNTS = tuple(f"pope_{s}_{c}" for s in POPE_STRATEGIES for c in ("tp", "fp", "fn", "tn"))
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
# Every metric with an interval: captions', POPE's averaged over the strategies asked, and each strategy's own.
INTERVAL_METRICS = (
    "precision",
    "recall",
    "f1",
    "chair_i",
    "chair_s",
    *(f"pope_{m}" for m in POPE_METRICS),
    *(f"pope_{s}_{m}" for s in POPE_STRATEGIES for m in POPE_METRICS),
    *AMBER_METRICS,
)
RESAMPLES = 1000
LEVEL = 0.95

Counts = Mapping[str, np.ndarray]  # column -> one value per image, images in one fixed order


def counts_of(table: pl.DataFrame) -> dict[str, np.ndarray]:
    """The per-image count columns of an evaluation's captions table, as float arrays (AMBER's too, on AMBER)."""
    columns = (*CAPTION_COUNTS, *POPE_COUNTS, *(AMBER_COUNTS if AMBER_COUNTS[0] in table.columns else ()))
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the evaluation table lacks the per-image counts {missing}; evaluate again")
    return {c: table[c].cast(pl.Float64).to_numpy() for c in columns}


def metrics_of(counts: Counts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each interval metric under each row of image `weights` (shape resamples × images); a row of ones gives
    the metric itself, computed as `caption_scores` and `pope_scores` compute it. A POPE strategy nobody was
    asked about (e.g. only one POPE file given) has no metrics of its own and stays out of the averages."""
    total = {name: weights @ values for name, values in counts.items()}
    mentioned = total["n_mentioned"]
    precision = np.where(mentioned > 0, 1.0 - ratio(total["n_hallucinated"], mentioned), 0.0)
    recall = ratio(total["n_covered"], total["n_truth"])
    out = {
        "precision": precision,
        "recall": recall,
        "f1": harmonic_mean(precision, recall),
        "chair_i": ratio(total["n_hallucinated_mentions"], total["n_mentions"]),
        "chair_s": ratio(weights @ (counts["n_hallucinated_mentions"] > 0), weights.sum(axis=1)),
    }
    per_strategy: dict[str, list[np.ndarray]] = {m: [] for m in POPE_METRICS}
    for strategy in POPE_STRATEGIES:
        if not any(counts[f"pope_{strategy}_{c}"].any() for c in ("tp", "fp", "fn", "tn")):
            continue
        tp, fp, fn, tn = (total[f"pope_{strategy}_{c}"] for c in ("tp", "fp", "fn", "tn"))
        asked = tp + fp + fn + tn
        pope_precision, pope_recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
        values = {
            "accuracy": ratio(tp + tn, asked),
            "precision": pope_precision,
            "recall": pope_recall,
            "f1": harmonic_mean(pope_precision, pope_recall),
            "yes_ratio": ratio(tp + fp, asked),
        }
        for name, value in values.items():
            out[f"pope_{strategy}_{name}"] = value
            per_strategy[name].append(value)
    # POPE's headline figures average the strategies, as the point estimates do
    for name, values in per_strategy.items():
        out[f"pope_{name}"] = np.mean(values, axis=0) if values else np.zeros(len(weights))
    if AMBER_COUNTS[0] in counts:  # AMBER's own, and the POPE figures the gate reads taken from its questions
        out |= amber_metrics(counts, weights, total)
    return out


def bootstrap_weights(images: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """`resamples` draws of `images` images with replacement, as counts per image."""
    if images < 1:
        raise ValueError("no images to resample")
    rng = np.random.default_rng(seed)
    return rng.multinomial(images, np.full(images, 1.0 / images), size=resamples).astype(float)


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def intervals(
    counts: Counts, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric over the evaluation images."""
    images = len(next(iter(counts.values())))
    samples = metrics_of(counts, bootstrap_weights(images, resamples, seed))
    return {name: _bounds(samples[name], level) for name in INTERVAL_METRICS if name in samples}


def paired_delta_intervals(
    before: Counts, after: Counts, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Interval of `after` − `before` for each metric, both models scored on the same resampled images (the
    count arrays of both must list the same images in the same order)."""
    images = len(next(iter(before.values())))
    if any(len(v) != images for v in (*before.values(), *after.values())):
        raise ValueError("paired intervals need both models' counts over the same images")
    weights = bootstrap_weights(images, resamples, seed)
    a, b = metrics_of(before, weights), metrics_of(after, weights)
    return {name: _bounds(b[name] - a[name], level) for name in INTERVAL_METRICS if name in a and name in b}


def standard_error(counts: Counts, metric: str = "precision", resamples: int = RESAMPLES, seed: int = 0) -> float:
    """The bootstrap standard error of one metric (how large an evaluation split must be: precision's should be
    at most a point)."""
    images = len(next(iter(counts.values())))
    return float(np.std(metrics_of(counts, bootstrap_weights(images, resamples, seed))[metric], ddof=1))
