"""One model's evaluation on one split as a `results.json` in lmms-eval's layout (Dagster-free), so the numbers
can be read with the tools that read lmms-eval's.

lmms-eval keys a task's metrics "<metric>,<filter>", the filter here always "none". Its CHAIR task is
`coco_cap_chair` (coco_cap_chair_i, coco_cap_chair_s); its POPE tasks per strategy are `pope_random`, `pope_pop`
and `pope_adv` (pope_accuracy, pope_precision, pope_recall, pope_f1_score, pope_yes_ratio). Next to each value,
"<metric>_ci95,none" holds its 95% bootstrap interval [low, high] over the images. The product's own figures
(object precision, recall, F1, CHAIR on any data, POPE averaged over the strategies) are the task `si_objects`.

On AMBER, its figures take the names of lmms-eval-based AMBER tasks (amber_chair, amber_cover, amber_hal,
amber_cog; amber_accuracy, amber_precision, amber_recall, amber_f1; amber_score), in a task per AMBER evaluation
argument: `amber_g` (descriptions), `amber_d` (every yes/no question), `amber_de`, `amber_da`, `amber_dr`
(existence, attribute, relation questions) and `amber` (the AMBER score).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from si_assets.evaluation.amber import DISCRIMINATIVE, question_columns
from si_assets.evaluation.metrics import POPE_STRATEGIES
from si_assets.evaluation.uncertainty import LEVEL, RESAMPLES, Counts

CHAIR_TASK = "coco_cap_chair"
POPE_TASKS = {"random": "pope_random", "popular": "pope_pop", "adversarial": "pope_adv"}
OWN_TASK = "si_objects"
FILTER = "none"

# task metric -> (the product's metric, higher is better), as lmms-eval's task files declare them
CHAIR_METRICS = {"coco_cap_chair_i": ("chair_i", False), "coco_cap_chair_s": ("chair_s", False)}
POPE_METRICS = {
    "pope_accuracy": ("accuracy", True),
    "pope_precision": ("precision", True),
    "pope_recall": ("recall", True),
    "pope_f1_score": ("f1", True),
    "pope_yes_ratio": ("yes_ratio", True),
}
OWN_METRICS = {
    "object_precision": ("precision", True),
    "object_recall": ("recall", True),
    "object_f1": ("f1", True),
    "chair_i": ("chair_i", False),
    "chair_s": ("chair_s", False),
    "pope_accuracy_mean": ("pope_accuracy", True),
    "pope_f1_mean": ("pope_f1", True),
}

AMBER_DESCRIPTIONS = {
    "amber_chair": ("amber_chair", False),
    "amber_cover": ("amber_cover", True),
    "amber_hal": ("amber_hal", False),
    "amber_cog": ("amber_cog", False),
}
AMBER_QUESTIONS = {"amber_d": "", "amber_de": "existence", "amber_da": "attribute", "amber_dr": "relation"}
AMBER_SCORE = {"amber_score": ("amber_score", True)}


def _asked(counts: Counts, strategy: str) -> int:
    return int(sum(counts[f"pope_{strategy}_{c}"].sum() for c in ("tp", "fp", "fn", "tn")))


def results_json(
    metrics: Mapping[str, float],
    bounds: Mapping[str, tuple[float, float]],
    counts: Counts,
    *,
    model: str,
    model_version: str,
    split: str,
    data_fingerprint: str,
    data_source: str,
    chair_variant: str | None,
) -> dict[str, Any]:
    """The document: `metrics` (the model's point values), `bounds` (their intervals) and `counts` (its per-image
    counts: how many images and POPE questions). `coco_cap_chair` is reported for COCO-style data only
    (`chair_variant` set): on the embedded world CHAIR counts each object once per caption, which is not COCO's
    CHAIR; POPE's tasks appear for the strategies that were asked, AMBER's on AMBER data (its question tasks for the
    kinds of question that were asked)."""
    images = len(next(iter(counts.values())))
    tasks: dict[str, tuple[dict[str, tuple[str, bool]], int]] = {}
    if chair_variant is not None:
        tasks[CHAIR_TASK] = (CHAIR_METRICS, images)
    if "amber_chair" in metrics:
        tasks["amber_g"] = (AMBER_DESCRIPTIONS, images)
        for task, group in AMBER_QUESTIONS.items():
            asked = int(sum(counts[name].sum() for name in question_columns(group)))
            if asked:
                prefix = f"amber_{group}_" if group else "amber_"
                tasks[task] = ({f"amber_{m}": (f"{prefix}{m}", True) for m in DISCRIMINATIVE}, asked)
        tasks["amber"] = (AMBER_SCORE, images)
    for strategy in POPE_STRATEGIES:
        if _asked(counts, strategy):
            names = {task: (f"pope_{strategy}_{name}", better) for task, (name, better) in POPE_METRICS.items()}
            tasks[POPE_TASKS[strategy]] = (names, _asked(counts, strategy))
    tasks[OWN_TASK] = (OWN_METRICS, images)

    results: dict[str, dict[str, Any]] = {}
    for task, (names, _) in tasks.items():
        entry: dict[str, Any] = {"alias": task}
        for name, (ours, _) in names.items():
            entry[f"{name},{FILTER}"] = float(metrics[ours])
            low_high = bounds.get(ours)
            entry[f"{name}_ci95,{FILTER}"] = [float(low_high[0]), float(low_high[1])] if low_high else None
        results[task] = entry
    return {
        "results": results,
        "higher_is_better": {
            task: {name: better for name, (_, better) in names.items()} for task, (names, _) in tasks.items()
        },
        "n-samples": {task: {"original": n, "effective": n} for task, (_, n) in tasks.items()},
        "config": {"model": model, "model_version": model_version},
        "split": split,
        "data": {"source": data_source, "fingerprint": data_fingerprint, "images": images},
        "chair_variant": chair_variant,
        "intervals": {"method": "percentile bootstrap over images", "level": LEVEL, "resamples": RESAMPLES},
    }
