"""The promotion gate: a trained model replaces its seed only if it hallucinates less in its captions without
losing recall, and answers yes/no questions about objects (POPE) no worse."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from pydantic import Field, model_validator

from si_assets.settings import Settings

RELATIVE = frozenset({"precision", "recall", "pope_f1"})
ABSOLUTE = frozenset({"pope_accuracy", "pope_yes_ratio"})


class GatePolicy(Settings):
    """When a trained model replaces its seed."""

    # Below about a point, precision moves between training seeds on a 300-image eval set (docs/results.md): a
    # smaller gain is noise, not a better model.
    min_precision_gain: float = Field(
        0.01, ge=-1, le=1, description="promotion gate: trained precision − seed precision"
    )
    # Against the round's seed AND the original base model, so no chain of rounds can trade recall away a little at
    # a time.
    recall_tolerance: float = Field(
        0.03, ge=0, le=1, description="promotion gate: largest recall loss vs seed and vs base"
    )
    # Fewer hallucinated mentions in captions do not make a better model if it now answers "yes" to every question.
    pope_tolerance: float = Field(
        0.03, ge=0, le=1, description="promotion gate: largest POPE F1 loss vs seed and vs base"
    )

    rule: Literal["interval", "point"] = Field(
        "interval",
        description="'interval': the paired 95% bootstrap interval of each change against the seed must clear the "
        "threshold (its lower bound), so a gain inside the evaluation's noise is refused; 'point': the measured "
        "changes alone",
    )
    # Absolute floors, whatever the seed did: a seed that answers "no" to everything (F1 0) would let a successor that
    # answers "yes" to everything pass every relative test. POPE is balanced, so chance accuracy is 0.5.
    min_pope_accuracy: float = Field(
        0.6, ge=0, le=1, description="promotion gate: POPE accuracy must reach this (chance: 0.5)"
    )
    min_yes_ratio: float = Field(
        0.2, ge=0, le=1, description="promotion gate: POPE 'yes' share, lower end of the sane band"
    )
    max_yes_ratio: float = Field(
        0.8, ge=0, le=1, description="promotion gate: POPE 'yes' share, upper end of the sane band"
    )

    @model_validator(mode="after")
    def _band(self) -> GatePolicy:
        if self.min_yes_ratio > self.max_yes_ratio:
            raise ValueError(f"min_yes_ratio {self.min_yes_ratio} > max_yes_ratio {self.max_yes_ratio}")
        return self

    def policy(self) -> GatePolicy:
        """The gate's fields alone (settings classes that extend this one carry more)."""
        return GatePolicy(**{name: getattr(self, name) for name in GatePolicy.model_fields})


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    precision_gain: float
    recall_change_vs_seed: float
    recall_change_vs_base: float
    pope_f1_change_vs_seed: float
    pope_f1_change_vs_base: float
    reasons: tuple[str, ...]

    def summary(self) -> str:
        verdict = "passed" if self.passed else "refused: " + "; ".join(self.reasons)
        return (
            f"precision {self.precision_gain:+.3f}, recall {self.recall_change_vs_seed:+.3f} vs seed, "
            f"{self.recall_change_vs_base:+.3f} vs base, POPE F1 {self.pope_f1_change_vs_seed:+.3f} vs seed, "
            f"{self.pope_f1_change_vs_base:+.3f} vs base: {verdict}"
        )


def degenerate_answers(metrics: Mapping[str, float], policy: GatePolicy) -> list[str]:
    """Why a model's yes/no answers are no better than a constant or a coin (empty: they are not)."""
    found = []
    accuracy, yes = metrics["pope_accuracy"], metrics["pope_yes_ratio"]
    if accuracy < policy.min_pope_accuracy:
        found.append(f"POPE accuracy {accuracy:.3f} < {policy.min_pope_accuracy:.3f} (chance is 0.5)")
    if not policy.min_yes_ratio <= yes <= policy.max_yes_ratio:
        constant = " (always 'yes')" if yes == 1 else " (always 'no')" if yes == 0 else ""
        found.append(
            f"answers 'yes' to {yes:.0%} of POPE questions{constant}, outside "
            f"[{policy.min_yes_ratio:.0%}, {policy.max_yes_ratio:.0%}]"
        )
    return found


def gate_decision(
    seed: Mapping[str, float],
    trained: Mapping[str, float],
    base: Mapping[str, float],
    policy: GatePolicy,
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> GateDecision:
    """`seed`, `trained`, `base`: eval metrics (`precision`, `recall`, `pope_f1`; for the trained model also
    `pope_accuracy` and `pope_yes_ratio`) of the round's seed, its trained model and the model the first round
    started from (the same as `seed` in round 1). Relative tests compare with seed and base; the absolute floors hold
    the trained model to chance whatever its seed did. With `rule: interval`, `intervals` are the paired bootstrap
    intervals of trained − seed per metric, and the tests against the seed read their bounds: the gain's lower bound
    must clear the minimum, the losses' lower bounds must stay inside the tolerances."""
    if policy.rule == "interval" and (intervals is None or not RELATIVE <= set(intervals)):
        raise KeyError(f"rule 'interval' needs the paired intervals of {sorted(RELATIVE)}")
    for name, metrics, needed in (
        ("seed", seed, RELATIVE),
        ("trained", trained, RELATIVE | ABSOLUTE),
        ("base", base, RELATIVE),
    ):
        missing = needed - set(metrics)
        if missing:
            raise KeyError(f"{name} metrics lack {sorted(missing)}")
    gain = trained["precision"] - seed["precision"]
    vs_seed = trained["recall"] - seed["recall"]
    vs_base = trained["recall"] - base["recall"]
    pope_vs_seed = trained["pope_f1"] - seed["pope_f1"]
    pope_vs_base = trained["pope_f1"] - base["pope_f1"]
    # Against the seed: the measured change, or with rule 'interval' the worst case its paired interval admits.
    low = {m: intervals[m][0] for m in RELATIVE} if policy.rule == "interval" else {}
    bound = " (lower bound of its 95% interval)" if low else ""
    reasons = []
    if low.get("precision", gain) < policy.min_precision_gain:
        # four decimals: a gain just under the minimum must not print as equal to it
        measured = f"{gain:+.4f}" + (
            f", interval [{low['precision']:+.4f}, {intervals['precision'][1]:+.4f}]" if low else ""
        )
        reasons.append(f"precision gain {measured} < {policy.min_precision_gain:+.4f}{bound}")
    if low.get("recall", vs_seed) < -policy.recall_tolerance:
        fell = -low.get("recall", vs_seed)
        reasons.append(f"recall fell {fell:.3f} below the seed{bound} (tolerance {policy.recall_tolerance:.3f})")
    if vs_base < -policy.recall_tolerance:
        reasons.append(f"recall fell {-vs_base:.3f} below the base model (tolerance {policy.recall_tolerance:.3f})")
    if low.get("pope_f1", pope_vs_seed) < -policy.pope_tolerance:
        fell = -low.get("pope_f1", pope_vs_seed)
        reasons.append(f"POPE F1 fell {fell:.3f} below the seed{bound} (tolerance {policy.pope_tolerance:.3f})")
    if pope_vs_base < -policy.pope_tolerance:
        reasons.append(f"POPE F1 fell {-pope_vs_base:.3f} below the base model (tolerance {policy.pope_tolerance:.3f})")
    reasons += [f"the trained model's yes/no answers are degenerate: {r}" for r in degenerate_answers(trained, policy)]
    return GateDecision(not reasons, gain, vs_seed, vs_base, pope_vs_seed, pope_vs_base, tuple(reasons))


def _z(probability: float) -> float:
    return NormalDist().inv_cdf(probability)


def _critical(level: float) -> float:
    """The two-sided normal quantile of `level` (1.96 at 0.95)."""
    return _z(0.5 + level / 2)


def interval_standard_error(low: float, high: float, level: float = 0.95) -> float:
    """The standard error a two-sided `level` interval [low, high] implies (normal approximation)."""
    return (high - low) / (2 * _critical(level))


def promotion_power(gain: float, standard_error: float, min_gain: float, level: float = 0.95) -> float:
    """The chance that rule 'interval' promotes a round whose true precision gain on dev is `gain`, when the paired
    estimate of it has `standard_error`: the interval's lower bound, about estimate − z·SE, must clear `min_gain`
    (normal approximation of the bootstrap interval; precision only, the recall and POPE tests aside)."""
    if standard_error <= 0:
        raise ValueError(f"standard_error must be positive, got {standard_error}")
    return NormalDist().cdf((gain - min_gain) / standard_error - _critical(level))


def gain_promoted(power: float, standard_error: float, min_gain: float, level: float = 0.95) -> float:
    """The true dev gain that rule 'interval' promotes with probability `power` at this `standard_error`."""
    return min_gain + (_critical(level) + _z(power)) * standard_error


def dev_images_for(
    gain: float, standard_error: float, images: int, min_gain: float, power: float = 0.8, level: float = 0.95
) -> int | None:
    """How many dev images rule 'interval' needs to promote a true `gain` with probability `power`, given the
    `standard_error` measured on `images` images (it shrinks as 1/√images); None when no number of images does
    (the gain does not exceed the minimum)."""
    if gain <= min_gain:
        return None
    return math.ceil(images * ((_critical(level) + _z(power)) * standard_error / (gain - min_gain)) ** 2)
