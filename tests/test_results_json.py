"""An evaluation's results.json: lmms-eval's task and metric names, each value with its interval, the model, the
split and the data it was scored on."""

import json

import numpy as np

from si_assets.evaluation.metrics import CAPTION_COUNTS
from si_assets.evaluation.results import results_json
from si_assets.evaluation.uncertainty import POPE_COUNTS

METRICS = {
    "precision": 0.8,
    "recall": 0.6,
    "f1": 0.6857,
    "chair_i": 0.25,
    "chair_s": 0.5,
    "mentions_per_caption": 2.0,
    "pope_accuracy": 0.75,
    "pope_f1": 0.7,
    **{f"pope_random_{m}": v for m, v in (("accuracy", 0.75), ("precision", 1.0), ("recall", 0.5), ("f1", 2 / 3))},
    "pope_random_yes_ratio": 0.25,
}
BOUNDS = {"chair_i": (0.1, 0.4), "chair_s": (0.2, 0.8), "precision": (0.7, 0.9), "pope_random_f1": (0.5, 0.9)}


def _counts() -> dict[str, np.ndarray]:
    """Three images; POPE asked only about the random strategy, 4 questions in all."""
    counts = {name: np.zeros(3) for name in (*CAPTION_COUNTS, *POPE_COUNTS)}
    counts["pope_random_tp"] = np.array([1.0, 0.0, 0.0])
    counts["pope_random_fn"] = np.array([0.0, 1.0, 0.0])
    counts["pope_random_tn"] = np.array([1.0, 0.0, 1.0])
    return counts


def _document(chair_variant: str | None) -> dict:
    return results_json(
        METRICS,
        BOUNDS,
        _counts(),
        model="trained",
        model_version="abc123",
        split="test",
        data_fingerprint="f" * 64,
        data_source="/data/instances_test.json",
        chair_variant=chair_variant,
    )


def test_results_use_lmms_eval_names_with_their_intervals() -> None:
    doc = _document("reference")
    assert set(doc["results"]) == {"coco_cap_chair", "pope_random", "si_objects"}  # no popular/adversarial asked
    chair = doc["results"]["coco_cap_chair"]
    assert chair == {
        "alias": "coco_cap_chair",
        "coco_cap_chair_i,none": 0.25,
        "coco_cap_chair_i_ci95,none": [0.1, 0.4],
        "coco_cap_chair_s,none": 0.5,
        "coco_cap_chair_s_ci95,none": [0.2, 0.8],
    }
    pope = doc["results"]["pope_random"]
    assert pope["pope_f1_score,none"] == 2 / 3 and pope["pope_f1_score_ci95,none"] == [0.5, 0.9]
    assert (pope["pope_accuracy,none"], pope["pope_precision,none"], pope["pope_recall,none"]) == (0.75, 1.0, 0.5)
    assert pope["pope_yes_ratio,none"] == 0.25 and pope["pope_yes_ratio_ci95,none"] is None  # no interval given
    own = doc["results"]["si_objects"]
    assert own["object_precision,none"] == 0.8 and own["object_precision_ci95,none"] == [0.7, 0.9]
    assert (own["pope_f1_mean,none"], own["pope_accuracy_mean,none"]) == (0.7, 0.75)
    assert doc["higher_is_better"]["coco_cap_chair"] == {"coco_cap_chair_i": False, "coco_cap_chair_s": False}
    assert doc["higher_is_better"]["pope_random"]["pope_f1_score"] is True
    assert doc["n-samples"] == {
        "coco_cap_chair": {"original": 3, "effective": 3},
        "pope_random": {"original": 4, "effective": 4},
        "si_objects": {"original": 3, "effective": 3},
    }


def test_results_name_the_model_the_split_and_the_data() -> None:
    doc = _document("corrected")
    assert doc["config"] == {"model": "trained", "model_version": "abc123"}
    assert (doc["split"], doc["chair_variant"]) == ("test", "corrected")
    assert doc["data"] == {"source": "/data/instances_test.json", "fingerprint": "f" * 64, "images": 3}
    assert doc["intervals"] == {"method": "percentile bootstrap over images", "level": 0.95, "resamples": 1000}
    assert json.loads(json.dumps(doc)) == doc  # plain JSON


def test_world_data_has_no_coco_chair_task() -> None:
    """The embedded world counts each object once per caption: not COCO's CHAIR, so only the product's own task
    carries its CHAIR figures."""
    doc = _document(None)
    assert "coco_cap_chair" not in doc["results"] and doc["chair_variant"] is None
    assert doc["results"]["si_objects"]["chair_i,none"] == 0.25
