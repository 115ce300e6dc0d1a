"""Round keys, the promotion gate, the champion registry and the rounds summary (Dagster-free)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from si_assets.evaluation.data import EvalSettings
from si_assets.evaluation.uncertainty import POPE_COUNTS, counts_of, metrics_of, paired_delta_intervals
from si_assets.plots import metric_bars_png, png_markdown
from si_assets.rounds import (
    ChampionRegistry,
    GatePolicy,
    Promotion,
    degenerate_answers,
    gate_decision,
    latest_round,
    next_round_key,
    round_key,
    round_number,
    round_seed,
    steps,
)
from si_assets.rounds.gate import dev_images_for, gain_promoted, interval_standard_error, promotion_power
from si_assets.rounds.steps import Scored
from si_assets.rounds.summary import plot_rounds, rounds_table
from si_assets.storage import ArtifactStore, Checkpoint
from si_assets.world import WorldSpec, generate_split
from tests.conftest import SMALL_SPLITS


def test_round_keys_order_by_number_and_reject_foreign_keys() -> None:
    assert round_key(1) == "round-0001" and round_key(12345) == "round-12345"
    assert round_number("round-0042") == 42
    for bad in ("round-1", "round-0000", "Round-0001", "round-00a1", "0001"):
        with pytest.raises(ValueError, match="not a round key"):
            round_number(bad)
    with pytest.raises(ValueError):
        round_key(0)
    keys = ["round-0009", "round-0010", "adhoc-test", "round-0002"]
    assert latest_round(keys) == "round-0010"  # by number, not by string order of mixed widths
    assert next_round_key(keys) == "round-0011"
    assert next_round_key([]) == "round-0001" and next_round_key(["adhoc"]) == "round-0001"


def test_round_seed_is_stable_and_differs_between_rounds() -> None:
    assert round_seed(0, "round-0001") == round_seed(0, "round-0001")
    seeds = {round_seed(0, round_key(n)) for n in range(1, 50)}
    assert len(seeds) == 49 and all(0 <= s < 2**31 for s in seeds)
    assert round_seed(1, "round-0001") != round_seed(0, "round-0001")


SEED = {"precision": 0.75, "recall": 0.86, "pope_f1": 0.85}
HEALTHY_ANSWERS = {"pope_accuracy": 0.85, "pope_yes_ratio": 0.5}


@pytest.mark.parametrize(
    ("trained", "base", "passed", "reason"),
    [
        ({"precision": 0.78, "recall": 0.84, "pope_f1": 0.83}, SEED, True, None),
        ({"precision": 0.755, "recall": 0.86, "pope_f1": 0.85}, SEED, False, "precision gain +0.0050 < +0.0100"),
        ({"precision": 0.7598, "recall": 0.86, "pope_f1": 0.85}, SEED, False, "precision gain +0.0098 < +0.0100"),
        ({"precision": 0.76, "recall": 0.86, "pope_f1": 0.85}, SEED, True, None),  # exactly the minimum gain passes
        ({"precision": 0.80, "recall": 0.82, "pope_f1": 0.85}, SEED, False, "recall fell 0.040 below the seed"),
        # Within tolerance of this round's seed, but the chain has drifted too far from the base model.
        (
            {"precision": 0.80, "recall": 0.84, "pope_f1": 0.85},
            {**SEED, "precision": 0.7, "recall": 0.88},
            False,
            "recall fell 0.040 below the base model",
        ),
        ({"precision": 0.70, "recall": 0.80, "pope_f1": 0.85}, SEED, False, "precision gain -0.0500"),
        # Fewer hallucinated mentions, but now it answers yes to every question about an object.
        ({"precision": 0.84, "recall": 0.86, "pope_f1": 0.66}, SEED, False, "POPE F1 fell 0.190 below the seed"),
        (
            {"precision": 0.80, "recall": 0.86, "pope_f1": 0.84},
            {**SEED, "pope_f1": 0.88},
            False,
            "POPE F1 fell 0.040 below the base model",
        ),
    ],
)
def test_gate_decision(trained: dict, base: dict, passed: bool, reason: str | None) -> None:
    policy = GatePolicy(min_precision_gain=0.01, recall_tolerance=0.03, pope_tolerance=0.03, rule="point")
    trained = HEALTHY_ANSWERS | trained
    decision = gate_decision(SEED, trained, base, policy)
    assert decision.passed is passed
    assert decision.precision_gain == pytest.approx(trained["precision"] - SEED["precision"])
    assert decision.recall_change_vs_base == pytest.approx(trained["recall"] - base["recall"])
    assert decision.pope_f1_change_vs_seed == pytest.approx(trained["pope_f1"] - SEED["pope_f1"])
    if reason:
        assert any(reason in r for r in decision.reasons), decision.reasons
        assert decision.summary().endswith("refused: " + "; ".join(decision.reasons))
    else:
        assert decision.reasons == () and decision.summary().endswith("passed")


def test_gate_rejects_bad_policy_and_missing_metrics() -> None:
    with pytest.raises(ValueError, match="recall_tolerance"):
        GatePolicy(recall_tolerance=-0.1)
    with pytest.raises(ValueError, match="pope_tolerance"):
        GatePolicy(pope_tolerance=1.5)
    with pytest.raises(KeyError, match="needs the paired intervals"):
        gate_decision(SEED, {**SEED, **HEALTHY_ANSWERS}, SEED, GatePolicy())  # rule 'interval' without intervals
    with pytest.raises(KeyError, match="trained metrics lack"):
        gate_decision(SEED, {"precision": 0.9}, SEED, GatePolicy(rule="point"))
    with pytest.raises(KeyError, match="pope_f1"):
        gate_decision(SEED, {"precision": 0.9, "recall": 0.9}, SEED, GatePolicy(rule="point"))
    with pytest.raises(KeyError, match="pope_yes_ratio"):
        gate_decision(SEED, {**SEED, "precision": 0.9, "pope_accuracy": 0.8}, SEED, GatePolicy(rule="point"))
    with pytest.raises(ValueError, match="min_yes_ratio"):
        GatePolicy(min_yes_ratio=0.9, max_yes_ratio=0.1)


def test_a_model_that_answers_yes_to_everything_is_never_promoted() -> None:
    """A seed that answers "no" to every POPE question has F1 0, so a relative test alone would let a successor that
    answers "yes" to everything through (F1 .667 >= 0 - tolerance). The absolute floors refuse it by name."""
    always_no = {"precision": 0.75, "recall": 0.86, "pope_f1": 0.0, "pope_accuracy": 0.5, "pope_yes_ratio": 0.0}
    always_yes = {"precision": 0.82, "recall": 0.85, "pope_f1": 0.667, "pope_accuracy": 0.5, "pope_yes_ratio": 1.0}
    decision = gate_decision(always_no, always_yes, always_no, GatePolicy(rule="point"))
    assert not decision.passed
    assert any("always 'yes'" in r for r in decision.reasons), decision.reasons
    assert any("POPE accuracy 0.500 < 0.600 (chance is 0.5)" in r for r in decision.reasons)
    assert degenerate_answers(always_no, GatePolicy())[1].startswith(
        "answers 'yes' to 0% of POPE questions (always 'no')"
    )
    healthy = {"precision": 0.82, "recall": 0.85, "pope_f1": 0.86, "pope_accuracy": 0.86, "pope_yes_ratio": 0.48}
    assert gate_decision(always_no, healthy, always_no, GatePolicy(rule="point")).passed  # after a broken seed
    assert degenerate_answers(healthy, GatePolicy()) == []


def _stored_checkpoint(store: ArtifactStore, tmp_path: Path, name: str) -> tuple[str, str, str]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").write_text(name)
    artifact = store.put(Checkpoint(folder), "trained_model", name)
    return artifact.version, artifact.uri, artifact.content_hash


def _promotion(store: ArtifactStore, tmp_path: Path, round_: str, seed: str, precision: float) -> Promotion:
    version, uri, digest = _stored_checkpoint(store, tmp_path, f"{round_}-{seed}-{precision}")
    return Promotion(round_, version, uri, digest, seed, {"precision": precision, "recall": 0.8}, SEED)


def test_registry_chains_rounds_and_refuses_to_break_the_chain(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    registry = ChampionRegistry(store)
    assert registry.current() is None and registry.champion_before("round-0001") is None

    first = _promotion(store, tmp_path, "round-0001", "base", 0.78)
    assert registry.promote(first).promoted
    assert registry.champion_before("round-0001") is None  # re-running round 1 starts from the base again
    assert registry.champion_before("round-0002") == first
    assert registry.checkpoint(first).path.joinpath("model.safetensors").read_text() == "round-0001-base-0.78"

    # A round seeded from something other than the champion before it is stale.
    stale = _promotion(store, tmp_path, "round-0002", "not-the-champion", 0.80)
    outcome = registry.promote(stale)
    assert not outcome.promoted and "run the round again" in outcome.reason and outcome.champion == first

    second = _promotion(store, tmp_path, "round-0002", first.version, 0.80)
    assert registry.promote(second).promoted
    assert registry.promote(second).reason == "already the champion"
    # Round 1 re-organized later cannot replace what round 2 already built on.
    late = _promotion(store, tmp_path, "round-0001", "base", 0.90)
    outcome = registry.promote(late)
    assert not outcome.promoted and "round-0002 already promoted" in outcome.reason
    # The same round may replace its own champion, only with a more precise model.
    worse = _promotion(store, tmp_path, "round-0002", first.version, 0.79)
    assert not registry.promote(worse).promoted
    better = _promotion(store, tmp_path, "round-0002", first.version, 0.82)
    assert registry.promote(better).reason == "replaced this round's earlier champion"
    assert [p.version for p in ChampionRegistry(store).history()] == [first.version, better.version]
    assert ChampionRegistry(store).current() == better  # read back from the store, not from memory


def test_promotion_needs_a_round_key() -> None:
    with pytest.raises(ValueError, match="not a round key"):
        Promotion("latest", "v", "uri", "h", "s", {}, {})


def test_rounds_table_and_plot() -> None:
    rows = [
        {"round": "round-0010", "seed_precision": 0.78, "trained_precision": 0.79, "promoted": False},
        {"round": "round-0002", "seed_precision": 0.75, "trained_precision": 0.78, "promoted": True},
        {"round": "round-0011", "seed_precision": None, "trained_precision": None, "promoted": False},  # running
    ]
    for row, (low, high) in zip(rows, [(0.77, 0.81), (None, None), (None, None)]):  # an interval where recorded
        row |= {"trained_precision_low": low, "trained_precision_high": high}
    table = rounds_table(rows)
    assert table["round"].to_list() == ["round-0002", "round-0010", "round-0011"]
    assert table["number"].to_list() == [2, 10, 11]
    png = plot_rounds(table, metrics=("precision", "recall"))  # recall absent: that panel stays empty
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    assert png_markdown(b"\x89PNG", "m") == "![m](data:image/png;base64,iVBORw==)"
    table = pl.DataFrame(
        {"metric": ["precision", "chair_s", "f1"], "seed": [0.7, 0.5, 0.8], "trained": [0.8, 0.4, 0.8]}
    )
    bars = metric_bars_png(table, ["precision", "chair_s"])
    assert bars.startswith(b"\x89PNG") and len(bars) > 2000
    intervals = {"seed_low": [0.68, 0.47, 0.78], "seed_high": [0.72, 0.53, 0.82]}
    whiskers = metric_bars_png(table.with_columns(**{k: pl.Series(v) for k, v in intervals.items()}), ["precision"])
    assert whiskers != metric_bars_png(table, ["precision"])  # the interval is drawn
    assert rounds_table([]).height == 0 and set(rounds_table([]).columns) == {"round", "number"}


def _scored(precision: float, images: int = 200) -> Scored:
    """A model's evaluation with `precision` exactly: 5 mentions per image, the hallucinated share spread evenly."""
    total = round(images * 5 * (1 - precision))
    wrong = np.full(images, total // images, dtype=np.int32)
    wrong[: total % images] += 1
    table = pl.DataFrame(
        {"id": [f"i{k}" for k in range(images)], "objects": [["circle"]] * images, "caption": [""] * images}
        | {"n_mentions": [5] * images, "n_hallucinated_mentions": wrong}
        | {"n_mentioned": [5] * images, "n_hallucinated": wrong, "n_covered": 5 - wrong, "n_truth": [6] * images}
        | {c: [2 if c.endswith(("_tp", "_tn")) else 0] * images for c in POPE_COUNTS}  # every answer right
    )
    metrics = {k: float(v[0]) for k, v in metrics_of(counts_of(table), np.ones((1, images))).items()}
    metrics |= {"mentions_per_caption": 5.0, "pope_yes_ratio": 0.5}
    return Scored(metrics, table, reused=False)


@pytest.mark.parametrize("dev_gain", [0.05, -0.05])
def test_the_gate_reads_the_dev_split_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dev_gain: float) -> None:
    """The test split moves the other way on purpose: the verdict follows dev, and test is only reported."""
    precision = {("seed", "dev"): 0.80, ("trained", "dev"): 0.80 + dev_gain}
    precision |= {("seed", "test"): 0.80, ("trained", "test"): 0.80 - dev_gain}
    read: list[str] = []

    def score(settings, models, store, checkpoint, data, log) -> Scored:
        split = data.source.removeprefix("world:")
        read.append(split)
        return _scored(precision[(checkpoint.path.name, split)])

    monkeypatch.setattr(steps, "score_checkpoint", score)
    world = {split: generate_split(WorldSpec(splits={**SMALL_SPLITS, split: 3}), split) for split in ("dev", "test")}
    seed, trained = (tmp_path / "seed", tmp_path / "trained")
    seed.mkdir(), trained.mkdir()
    result = steps.evaluate(
        EvalSettings(), GatePolicy(), None, ArtifactStore(tmp_path), Checkpoint(seed), Checkpoint(trained), world, None
    )
    assert sorted(read) == ["dev", "dev", "test", "test"]  # both are scored, for the report
    assert result.gate.passed is (dev_gain > 0)
    assert result.gate.precision_gain == pytest.approx(dev_gain)
    test_rows = result.table.filter(pl.col("split") == "test")
    assert dict(zip(test_rows["metric"], test_rows["delta"]))["precision"] == pytest.approx(-dev_gain)
    assert result.base_metrics["precision"] == pytest.approx(0.80)  # round 1: the base is the seed, on dev


def _fixed(before: dict[str, np.ndarray], share: float) -> dict[str, np.ndarray]:
    """`before` with one hallucinated mention turned right on the first `share` of the images that have one."""
    after = {k: v.copy() for k, v in before.items()}
    wrong = np.flatnonzero(before["n_hallucinated"] > 0)
    fixed = wrong[: int(len(wrong) * share)]
    after["n_hallucinated"][fixed] -= 1
    after["n_covered"][fixed] += 1
    return after


@pytest.mark.parametrize(("share", "promoted"), [(0.06, False), (0.5, True)])
def test_the_interval_gate_refuses_a_gain_inside_the_noise(share: float, promoted: bool) -> None:
    """300 images, 3 mentions each, a fifth of them wrong. Fixing 6% of the wrong images gains about a point, no more
    than the evaluation's noise allows telling apart from nothing: refused, though the point gain clears the
    minimum. Fixing half of them is clearly better: promoted."""
    rng = np.random.default_rng(5)
    wrong = rng.binomial(3, 0.2, 300).astype(float)
    before = {"n_mentions": np.full(300, 3.0), "n_hallucinated_mentions": wrong}
    before |= {"n_mentioned": np.full(300, 3.0), "n_hallucinated": wrong, "n_covered": 3 - wrong}
    before |= {"n_truth": np.full(300, 4.0)} | {c: np.full(300, 1.0) for c in POPE_COUNTS}
    after = _fixed(before, share)
    ones = np.ones((1, 300))
    seed, trained = ({k: float(v[0]) for k, v in metrics_of(c, ones).items()} for c in (before, after))
    seed |= {"pope_yes_ratio": 0.5}
    trained |= {"pope_accuracy": 0.9, "pope_yes_ratio": 0.5}
    policy = GatePolicy(min_precision_gain=0.005)
    assert trained["precision"] - seed["precision"] >= policy.min_precision_gain
    intervals = paired_delta_intervals(before, after)
    decision = gate_decision(seed, trained, seed, policy, intervals)
    assert decision.passed is promoted
    assert gate_decision(seed, trained, seed, policy.model_copy(update={"rule": "point"})).passed  # the old rule
    if not promoted:
        assert "(lower bound of its 95% interval)" in decision.summary()


def _gate_pass_rate(images: int, fix: float, policy: GatePolicy, runs: int, seed: int) -> tuple[float, float]:
    """Over `runs` simulated dev splits of `images` images (3 mentions each, each wrong with probability .2; the
    trained model fixes one wrong mention of an image with probability `fix`): the share rule 'interval' promotes on
    precision, and the mean standard error of the paired gain its intervals imply."""
    rng = np.random.default_rng(seed)
    passed, errors = 0, []
    for run in range(runs):
        wrong = rng.binomial(3, 0.2, images).astype(float)
        fixed = (wrong > 0) & (rng.random(images) < fix)
        before = {"n_mentioned": np.full(images, 3.0), "n_hallucinated": wrong}
        before |= {"n_covered": 3 - wrong, "n_truth": np.full(images, 4.0)}
        before |= {"n_mentions": before["n_mentioned"], "n_hallucinated_mentions": wrong}
        before |= {c: np.full(images, 1.0) for c in POPE_COUNTS}
        after = before | {"n_hallucinated": wrong - fixed, "n_covered": 3 - wrong + fixed}
        low, high = paired_delta_intervals(before, after, resamples=400, seed=run)["precision"]
        passed += low >= policy.min_precision_gain
        errors.append(interval_standard_error(low, high))
    return passed / runs, float(np.mean(errors))


def test_promotion_power_predicts_how_often_the_interval_gate_promotes() -> None:
    """A true gain of two points against the gate's one-point minimum: the normal approximation of the bootstrap
    interval predicts the simulated promotion rate, and the dev size it asks for promotes that gain 80% of the
    time."""
    policy = GatePolicy()
    fix = 0.06 / (1 - 0.8**3)  # the population gain: fix × P(an image has a wrong mention) / 3 = 0.02
    rate, error = _gate_pass_rate(400, fix, policy, runs=200, seed=0)
    predicted = promotion_power(0.02, error, policy.min_precision_gain)
    assert 0.4 < predicted < 0.9  # a gain near the gate's edge, where the prediction matters
    assert abs(rate - predicted) < 0.1
    assert promotion_power(gain_promoted(0.8, error, policy.min_precision_gain), error, 0.01) == pytest.approx(0.8)
    needed = dev_images_for(0.02, error, 400, policy.min_precision_gain)
    assert needed is not None and needed > 400
    rate_needed, _ = _gate_pass_rate(needed, fix, policy, runs=200, seed=1)
    assert abs(rate_needed - 0.8) < 0.1
    assert dev_images_for(0.01, error, 400, policy.min_precision_gain) is None  # the minimum itself: never sure
    with pytest.raises(ValueError, match="standard_error"):
        promotion_power(0.02, 0.0, 0.01)
