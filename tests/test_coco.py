"""COCO-format evaluation data: CHAIR on a hand-checked set, POPE's question files, bad files, and eval_scores on a
COCO-format set end to end (its lmms-eval-style results.json included). CHAIR's rules: tests/test_chair.py."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from si_assets.assets.evaluation import EvalConfig
from si_assets.evaluation.coco import load_chair, load_coco_instances, load_pope_questions
from si_assets.evaluation.metrics import caption_scores, pope_scores
from si_assets.storage import Checkpoint
from tests.eval_run import evaluate_once, run_eval_scores

INSTANCES = {
    "images": [{"id": 10, "file_name": "a.jpg"}, {"id": 11, "file_name": "b.jpg"}, {"id": 12, "file_name": "c.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1},
        {"id": 2, "image_id": 10, "category_id": 2},
        {"id": 3, "image_id": 11, "category_id": 3},
        {"id": 4, "image_id": 11, "category_id": 4},
        {"id": 5, "image_id": 11, "category_id": 4},
    ],
    "categories": [
        {"id": 2, "name": "dog"},
        {"id": 1, "name": "person"},
        {"id": 4, "name": "knife"},
        {"id": 3, "name": "dining table"},
    ],
}
SYNONYMS = "person, man, woman, people, person\ndog, puppy\n\ndining table, table\nknife, knives\n"


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "instances_val.json").write_text(json.dumps(INSTANCES))
    (tmp_path / "synonyms.txt").write_text(SYNONYMS)
    return tmp_path / "instances_val.json", tmp_path / "synonyms.txt"


def test_chair_on_coco_annotations_matches_the_hand_count(coco: tuple[Path, Path]) -> None:
    labeled = load_coco_instances(coco[0])
    assert labeled.ids == [10, 11, 12]
    assert labeled.files == ["a.jpg", "b.jpg", "c.jpg"]
    assert labeled.objects == [["dog", "person"], ["dining table", "knife"], []]
    assert labeled.categories == ["person", "dog", "dining table", "knife"]
    vocab = load_chair(coco[1], labeled.categories)
    captions = [
        "A man walks his puppy past a table.",  # person, dog, dining table (absent): 3 mentions, 1 hallucinated
        "Knives on a dining table.",  # knife, dining table: 2 mentions, none hallucinated
        "An empty room with a dog.",  # dog (absent): 1 mention, 1 hallucinated
    ]
    assert [m.object for m in vocab.find(captions[0])] == ["person", "dog", "dining table"]
    scores = caption_scores(captions, labeled.objects, vocab)
    # By hand: 6 mentions, 2 hallucinated; 2 of 3 captions hallucinate; all 4 annotated objects are mentioned.
    assert scores.chair_i == pytest.approx(2 / 6)
    assert scores.chair_s == pytest.approx(2 / 3)
    assert scores.precision == pytest.approx(4 / 6)
    assert scores.recall == pytest.approx(1.0)
    assert scores.f1 == pytest.approx(0.8)
    assert scores.mentions_per_caption == pytest.approx(2.0)


def test_pope_question_files_are_read_in_their_published_format(tmp_path: Path) -> None:
    rows = [
        {"question_id": 1, "image": "a.jpg", "text": "Is there a person in the image?", "label": "yes"},
        {"question_id": 2, "image": "a.jpg", "text": "Is there a car in the image?", "label": "no"},
        {"question_id": 3, "image": "b.jpg", "text": "Is there a dining table in the image?", "label": "yes"},
        {"question_id": 4, "image": "b.jpg", "text": "Is there an umbrella in the image?", "label": "no"},
    ]
    path = tmp_path / "coco_pope_adversarial.json"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    questions = load_pope_questions(path)
    assert [(q.image_id, q.object, q.label, q.strategy) for q in questions] == [
        ("a.jpg", "person", True, "adversarial"),
        ("a.jpg", "car", False, "adversarial"),
        ("b.jpg", "dining table", True, "adversarial"),
        ("b.jpg", "umbrella", False, "adversarial"),
    ]
    scores = pope_scores([q.label for q in questions], [True, False, False, True])  # 1 hit, 1 miss, 1 false yes
    assert scores == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5}


def test_bad_evaluation_files_are_clear_errors(tmp_path: Path, coco: tuple[Path, Path]) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="no \\['categories'\\]"):
        load_coco_instances(broken)
    stray = dict(INSTANCES, annotations=[{"id": 9, "image_id": 99, "category_id": 1}])
    broken.write_text(json.dumps(stray))
    with pytest.raises(ValueError, match="unknown image 99"):
        load_coco_instances(broken)
    broken.write_text(json.dumps(INSTANCES)[:-5])
    with pytest.raises(ValueError, match=f"{broken} is not valid JSON"):
        load_coco_instances(broken)
    with pytest.raises(ValueError, match="instances file .*nowhere.json does not exist"):
        load_coco_instances(tmp_path / "nowhere.json")
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is it red?", "label": "yes"}))
    with pytest.raises(ValueError, match="say which POPE strategy"):
        load_pope_questions(questions)
    with pytest.raises(ValueError, match="not a POPE question"):
        load_pope_questions(questions, strategy="random")
    questions.write_text('{"question_id": 1, "image": "a.jpg",\n')
    with pytest.raises(ValueError, match="questions.json:1: not valid JSON"):
        load_pope_questions(questions, strategy="random")


def test_eval_scores_runs_on_a_coco_format_set(tmp_path: Path, coco: tuple[Path, Path], tiny_llava_dir: Path) -> None:
    images = tmp_path / "val2014"
    images.mkdir()
    for k, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        pixels = np.random.default_rng(k).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name)
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text(
        json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"})
        + "\n"
        + json.dumps({"question_id": 2, "image": "b.jpg", "text": "Is there a person in the image?", "label": "no"})
    )
    said = {10: "A man walks his dog.", 11: "Knives on a table.", 12: "An empty bus stop."}
    captions = tmp_path / "captions_val.json"
    captions.write_text(
        json.dumps({"annotations": [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(said.items())]})
    )
    dev = tmp_path / "instances_dev.json"  # a dev set of its own: two of the images
    dev.write_text(
        json.dumps({**INSTANCES, "images": INSTANCES["images"][:2]} | {"annotations": INSTANCES["annotations"]})
    )
    config = EvalConfig(
        source="coco",
        coco_dev_instances=str(dev),
        coco_dev_images=str(images),
        coco_test_instances=str(coco[0]),
        coco_test_images=str(images),
        coco_test_pope_files=[str(pope)],
        coco_test_captions=str(captions),
        coco_synonyms=str(coco[1]),
        max_new_tokens=8,
    )
    run = evaluate_once(tmp_path / "store", config, tiny_llava_dir)
    output, gate, answers, table, metrics = run.output, run.gate, run.answers, run.table, run.metrics
    assert output.metadata["images/test"].value == 3 and output.metadata["images/dev"].value == 2
    assert output.metadata["eval_source"].value == str(coco[0])
    assert {"precision", "recall", "chair_s", "pope_random_f1", "pope_f1"} <= set(metrics["test"])
    assert "pope_popular_f1" not in metrics["test"]  # only the strategies whose files were given
    assert "pope_popular_f1" in metrics["dev"]  # no file for dev: questions built from its labels
    assert 0.0 <= metrics["test"]["recall"] <= 1.0 and table["delta"].abs().max() == 0.0  # same model on both sides
    assert gate.check_name == "promotion_gate" and not gate.passed  # no gain: refused
    # a random-weight model answers yes/no no better than chance: flagged, for the seed and the trained model alike
    assert answers.check_name == "degenerate_answers" and not answers.passed
    assert "seed:" in answers.description and "trained:" in answers.description

    # each model's results per split, in lmms-eval's layout
    written = run.written
    assert sorted(written) == ["dev/seed", "dev/trained", "test/seed", "test/trained"]
    test = json.loads(Path(written["test/trained"]).read_text())
    assert test["results"]["coco_cap_chair"]["coco_cap_chair_i,none"] == pytest.approx(metrics["test"]["chair_i"])
    assert test["results"]["pope_random"]["pope_f1_score,none"] == pytest.approx(metrics["test"]["pope_random_f1"])
    assert (
        "pope_pop" not in test["results"]
        and "pope_pop" in json.loads(Path(written["dev/trained"]).read_text())["results"]
    )
    assert test["n-samples"]["coco_cap_chair"] == {"original": 3, "effective": 3}
    assert (test["split"], test["chair_variant"], test["config"]["model_version"]) == (
        "test",
        "reference",
        Checkpoint(tiny_llava_dir).version,
    )

    broken = config.model_copy(update={"coco_test_captions": str(tmp_path / "nowhere.json")})
    with pytest.raises(dg.Failure, match="captions file .*nowhere.json does not exist"):
        run_eval_scores(tmp_path / "store", broken, tiny_llava_dir)
    (images / "b.jpg").write_bytes(b"")
    with pytest.raises(dg.Failure, match="b.jpg: zero_bytes"):
        run_eval_scores(tmp_path / "store", config, tiny_llava_dir)
    with pytest.raises(ValueError, match="needs a dev and a test set"):
        EvalConfig(source="coco", coco_test_instances=str(coco[0]), coco_test_images=str(images))
    with pytest.raises(ValueError, match="must differ"):
        EvalConfig(
            **{f"coco_{s}_{p}": str(coco[0]) for s in ("dev", "test") for p in ("instances", "images")}
            | {"source": "coco"}
        )
