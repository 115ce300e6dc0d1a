"""AMBER on a tiny copy of its files (tests/fixtures/amber: five images, their description queries and eleven yes/no
questions, a small relation.json and safe word list): its scoring worked out by hand, its rules one at a time, bad
files, the dev/test split, and eval_scores on it end to end (results.json included)."""

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from si_assets.assets.evaluation import EvalConfig
from si_assets.evaluation.amber import lemma, load_amber, load_words, nouns, split_of
from si_assets.evaluation.data import amber_eval_data
from si_assets.evaluation.evaluate import score_amber
from si_assets.evaluation.results import results_json
from si_assets.evaluation.uncertainty import counts_of, intervals
from tests.eval_run import evaluate_once, run_eval_scores

FIXTURE = Path(__file__).parent / "fixtures" / "amber"
IMAGES = FIXTURE / "image"

# One description per image (AMBER_1 ... AMBER_5), and a reply per yes/no question (ids 6 ... 16)
DESCRIPTIONS = [
    # truth sky, grass, person; hallu dog, car. man (person), grass, sky covered; dog hallucinated and recognised
    "A man stands on the grass under a blue sky. A dog runs nearby.",
    # truth ship, sea, ship; hallu bird, tree. boat (the first ship), water (sea), ship (the first ship again):
    # AMBER marks the first entry a word names, so the second "ship" is never covered; bird hallucinated
    "Two boats sail on the water. A bird flies above a ship.",
    # truth grass, ground; hallu bin, cloud. "ground" is associated with grass, which comes first: it covers grass,
    # not ground; "you can see" is the modal, "a can" names the bin (hallucinated, recognised); clouds likewise
    "The ground is covered with grass. You can see a can and clouds.",
    # truth car, tree; hallu sky, person. "light" is a safe word: a noun, never a hallucination
    "A car parked by a tree. Its light is on.",
    # truth dog, watch; hallu bird. "to watch" is a verb; birds hallucinated and recognised
    "A dog wants to watch the birds.",
]
REPLIES = [
    "No, there is no dog.",  # 6 existence, truth no: right
    "Yes.",  # 7 state, yes: right
    "Yes",  # 8 state, no: wrong
    "No",  # 9 number, yes: wrong
    "no",  # 10 existence, no: right
    "Maybe",  # 11 state, yes: neither yes nor no, wrong
    "Yes, they touch.",  # 12 relation, yes: right
    "I cannot tell",  # 13 existence, no: neither, wrong
    "No.",  # 14 relation ("relation", as some of AMBER's own items say), no: right
    "Yes",  # 15 action, yes: right
    "Yes",  # 16 existence, no: wrong
]


def test_nouns_stand_in_for_nltks_tagger_and_wordnets_lemmas() -> None:
    words = load_words(FIXTURE)
    assert words.mentions("Two dogs can be seen near the trees.") == ["dog", "tree"]  # "can" after a noun: modal
    assert words.mentions("A man holds a can; they can watch the dog.") == ["man", "can", "dog"]
    assert words.mentions("Two people and three men in the light of a hot day.") == ["people", "man", "light"]
    assert words.mentions("Dogs run to the sea.") == ["sea"]  # WordNet leaves "Dogs" as written: not AMBER's "dog"
    # where the word before says nothing, a verb counts and a noun after a noun is the modal (docs/metrics.md#amber)
    assert words.mentions("A man watches the sea from a trash can.") == ["man", "watch", "sea"]
    assert nouns("An orange cat and two oranges") == ["An", "cat", "and", "two", "orange"]
    assert [lemma(w) for w in ("people", "men", "leaves", "buses", "bus", "glasses", "TV")] == [
        "people",
        "man",
        "leaf",
        "bus",
        "bus",
        "glass",
        "TV",
    ]


def test_a_description_is_scored_as_amber_scores_it() -> None:
    words = load_words(FIXTURE)
    first = words.score("Two ships and a boat.", ["ship", "sea", "ship"], ["bird"])
    assert first.covered == [True, False, False] and first.hallucinated == []
    ground = words.score("Bare ground.", ["grass", "ground"], [])
    assert ground.covered == [True, False]  # "ground" is grass's associated word before it is an object itself
    light = words.score("A light and a dog and a dog.", ["light"], ["dog"])
    assert light.mentions == ["light", "dog", "dog"] and light.covered == [False]  # a safe word covers nothing
    assert light.hallucinated == ["dog", "dog"] and light.recognised == [True]  # every mention counts
    assert light.counts() == {
        "n_mentions": 3,
        "n_hallucinated_mentions": 2,
        "n_mentioned": 3,
        "n_hallucinated": 2,
        "n_covered": 0,
        "n_truth": 1,
        "amber_cog_hits": 1,
        "amber_cog_objects": 1,
    }


def test_the_fixture_scored_by_hand() -> None:
    amber = load_amber(FIXTURE)
    assert amber.images == [f"AMBER_{k}.png" for k in range(1, 6)]
    assert [(q.id, q.kind, q.truth) for q in amber.questions[:3]] == [
        (6, "existence", False),
        (7, "state", True),
        (8, "state", False),
    ]
    assert amber.questions[8].kind == "relation"  # type "relation"
    result = score_amber(amber, DESCRIPTIONS, REPLIES)
    m = result.metrics
    # descriptions: nouns 4 + 4 + 4 + 3 + 2 = 17, hallucinated 1 + 1 + 2 + 0 + 1 = 5; truth entries covered
    # 3 + 2 + 1 + 2 + 1 = 9 of 12; 4 of 5 descriptions hallucinate; hallu entries recognised 1 + 1 + 2 + 0 + 1 of 9
    assert m["amber_chair"] == pytest.approx(5 / 17)
    assert m["amber_cover"] == pytest.approx(9 / 12)
    assert m["amber_hal"] == pytest.approx(4 / 5)
    assert m["amber_cog"] == pytest.approx(5 / 9)
    # questions: right yes 3 (7, 12, 15), wrong "no" 1 (9), neither 1 (11); right no 3 (6, 10, 14), wrong "yes"
    # 2 (8, 16), neither 1 (13). "No" is positive: precision 3 / 4 answers "no", recall 3 / 6 questions whose answer
    # is no, F1 = 2 · 3/4 · 1/2 / (3/4 + 1/2) = 3/5
    assert m["amber_accuracy"] == pytest.approx(6 / 11)
    assert m["amber_precision"] == pytest.approx(3 / 4)
    assert m["amber_recall"] == pytest.approx(1 / 2)
    assert m["amber_f1"] == pytest.approx(3 / 5)
    assert m["amber_yes_ratio"] == pytest.approx(5 / 11)
    assert m["amber_score"] == pytest.approx((1 - 5 / 17 + 3 / 5) / 2)  # 111/170
    # by dimension: existence 6, 10 right, 13 neither, 16 wrong; attribute 7, 15 right, 8, 9, 11 wrong;
    # relation 12, 14 right
    existence = [m[f"amber_existence_{k}"] for k in ("accuracy", "precision", "recall", "f1")]
    assert existence == pytest.approx([2 / 4, 1.0, 2 / 4, 2 / 3])
    attribute = [m[f"amber_attribute_{k}"] for k in ("accuracy", "precision", "recall", "f1")]
    assert attribute == pytest.approx([2 / 5, 0.0, 0.0, 0.0])
    assert [m[f"amber_relation_{k}"] for k in ("accuracy", "precision", "recall", "f1")] == pytest.approx([1] * 4)
    assert (m["amber_state_accuracy"], m["amber_number_accuracy"], m["amber_action_accuracy"]) == pytest.approx(
        (1 / 3, 0.0, 1.0)
    )
    # what the gate reads
    assert m["precision"] == pytest.approx(1 - 5 / 17) and m["chair_i"] == pytest.approx(5 / 17)
    assert m["recall"] == pytest.approx(9 / 12) and m["chair_s"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(8 / 11)  # 2 · 12/17 · 3/4 / (12/17 + 3/4)
    assert (m["pope_accuracy"], m["pope_f1"], m["pope_yes_ratio"]) == pytest.approx((6 / 11, 3 / 5, 5 / 11))
    assert m["mentions_per_caption"] == pytest.approx(17 / 5) and m["pope_unparsed"] == pytest.approx(2 / 11)
    # descriptions that name nothing: AMBER's CHAIR is 0, but the gate's precision is 0 too, as on any data
    silent = score_amber(amber, [""] * 5, REPLIES).metrics
    assert (silent["amber_chair"], silent["precision"], silent["amber_cover"]) == (0.0, 0.0, 0.0)

    table = result.captions
    assert table["mentions"][2].to_list() == ["ground", "grass", "can", "cloud"]
    assert table["hallucinated"][2].to_list() == ["can", "cloud"]
    assert table["amber_existence_no_no"].to_list() == [1, 1, 0, 0, 0]

    counts = counts_of(table)
    bounds = intervals(counts)
    for name in ("amber_chair", "amber_cover", "amber_cog", "amber_f1", "amber_score", "pope_f1"):
        assert bounds[name][0] <= m[name] <= bounds[name][1]

    document = results_json(
        m,
        bounds,
        counts,
        model="trained",
        model_version="v",
        split="test",
        data_fingerprint="f",
        data_source=str(FIXTURE),
        chair_variant=None,
    )
    results = document["results"]
    assert sorted(results) == ["amber", "amber_d", "amber_da", "amber_de", "amber_dr", "amber_g", "si_objects"]
    assert results["amber_g"]["amber_chair,none"] == pytest.approx(5 / 17)
    assert results["amber_g"]["amber_cog,none"] == pytest.approx(5 / 9)
    assert results["amber_d"]["amber_f1,none"] == pytest.approx(3 / 5)
    assert results["amber_de"]["amber_f1,none"] == pytest.approx(2 / 3)
    assert results["amber"]["amber_score,none"] == pytest.approx(111 / 170)
    assert document["higher_is_better"]["amber_g"] == {
        "amber_chair": False,
        "amber_cover": True,
        "amber_hal": False,
        "amber_cog": False,
    }
    samples = {task: n["original"] for task, n in document["n-samples"].items()}
    assert samples == {"amber_g": 5, "amber_d": 11, "amber_de": 4, "amber_da": 5, "amber_dr": 2, "amber": 5} | {
        "si_objects": 5
    }


def test_images_split_into_dev_and_test_by_their_names() -> None:
    assert [split_of(f"AMBER_{k}.png") for k in range(1, 6)] == ["dev", "test", "test", "test", "dev"]
    dev, test = (amber_eval_data(FIXTURE, IMAGES, split) for split in ("dev", "test"))
    assert dev.ids == ["AMBER_1.png", "AMBER_5.png"] and test.ids == ["AMBER_2.png", "AMBER_3.png", "AMBER_4.png"]
    assert [q.id for q in dev.amber.questions] == [6, 7, 8, 15, 16]
    assert dev.truths == [["sky", "grass", "person"], ["dog", "watch"]]
    assert dev.fingerprint != test.fingerprint and dev.chair_variant is None
    capped = amber_eval_data(FIXTURE, IMAGES, "test", limit=1)
    assert capped.ids == ["AMBER_2.png"] and [q.id for q in capped.amber.questions] == [9, 10]


def _edited(folder: Path, path: str, edit) -> Path:
    """`folder` (a copy of the fixture, made when missing) with one of its JSON files edited."""
    if not folder.exists():
        shutil.copytree(FIXTURE, folder)
    target = folder / path
    target.write_text(json.dumps(edit(json.loads(target.read_text()))))
    return folder


def test_bad_amber_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AMBER relation file .*nowhere/data/relation.json does not exist"):
        load_amber(tmp_path / "nowhere")
    annotations, queries, relation = "data/annotations.json", "data/query/query_all.json", "data/relation.json"
    folder = _edited(tmp_path / "a", annotations, lambda a: [{**a[0], "truth": ["sky", "unicorn"]}, *a[1:]])
    with pytest.raises(ValueError, match="annotations.json: id 1: 'unicorn' is not an object of .*relation.json"):
        load_amber(folder)
    folder = _edited(tmp_path / "b", annotations, lambda a: [*a[:5], {**a[5], "truth": "maybe"}, *a[6:]])
    with pytest.raises(ValueError, match="id 6: a yes/no question's truth must be 'yes' or 'no'"):
        load_amber(folder)
    folder = _edited(tmp_path / "c", annotations, lambda a: a[:-1])
    with pytest.raises(ValueError, match="query_all.json: id 16 has no annotation"):
        load_amber(folder)
    folder = _edited(tmp_path / "d", queries, lambda q: [*q, {"id": 17, "image": "AMBER_9.png", "query": "Is it?"}])
    _edited(folder, annotations, lambda a: [*a, {"id": 17, "type": "x", "truth": "no"}])
    with pytest.raises(ValueError, match="questions about images without a description query: \\['AMBER_9.png'\\]"):
        load_amber(folder)
    folder = _edited(tmp_path / "e", annotations, lambda a: [*a, a[0]])
    with pytest.raises(ValueError, match="annotations.json: id 1 twice"):
        load_amber(folder)
    folder = _edited(tmp_path / "f", relation, lambda r: {**r, "sky": "blue"})
    with pytest.raises(ValueError, match="relation.json: expected"):
        load_amber(folder)
    folder = _edited(tmp_path / "g", relation, lambda r: r)
    (folder / "data/safe_words.txt").unlink()
    with pytest.raises(ValueError, match="AMBER safe words file .*safe_words.txt does not exist"):
        load_amber(folder)


def test_eval_scores_runs_on_amber(tmp_path: Path, tiny_llava_dir: Path) -> None:
    config = EvalConfig(source="amber", amber_dir=str(FIXTURE), amber_images=str(IMAGES), max_new_tokens=8)
    run = evaluate_once(tmp_path / "store", config, tiny_llava_dir)
    output, gate, answers, table, metrics = run.output, run.gate, run.answers, run.table, run.metrics
    assert output.metadata["images/dev"].value == 2 and output.metadata["images/test"].value == 3
    assert output.metadata["eval_source"].value == str(FIXTURE)
    test = metrics["test"]
    assert test["chair_i"] == test["amber_chair"] and test["recall"] == test["amber_cover"]
    assert test["pope_f1"] == test["amber_f1"] and test["pope_accuracy"] == test["amber_accuracy"]
    assert test["amber_score"] == pytest.approx((1 - test["amber_chair"] + test["amber_f1"]) / 2)
    assert "amber_relation_f1" in test and "amber_relation_f1" not in metrics["dev"]  # dev has no relation question
    assert "pope_random_f1" not in test
    assert table["delta"].abs().max() == 0.0  # the same model on both sides
    for split in ("dev", "test"):
        assert output.metadata[f"{split}/trained/amber_chair"].value == metrics[split]["amber_chair"]
    assert gate.check_name == "promotion_gate" and not gate.passed  # no gain: refused
    assert answers.check_name == "degenerate_answers"

    written = run.written
    assert sorted(written) == ["dev/seed", "dev/trained", "test/seed", "test/trained"]
    document = json.loads(Path(written["test/trained"]).read_text())
    assert document["results"]["amber_g"]["amber_chair,none"] == pytest.approx(test["amber_chair"])
    assert document["results"]["amber_d"]["amber_f1,none"] == pytest.approx(test["amber_f1"])
    assert document["n-samples"]["amber_d"] == {"original": 6, "effective": 6}  # questions 9 ... 14
    assert "coco_cap_chair" not in document["results"] and document["chair_variant"] is None
    dev = json.loads(Path(written["dev/trained"]).read_text())
    assert "amber_dr" not in dev["results"] and dev["n-samples"]["amber_da"]["original"] == 3

    (tmp_path / "images").mkdir()
    for name in ("AMBER_1.png", "AMBER_2.png", "AMBER_3.png", "AMBER_5.png"):
        shutil.copy(IMAGES / name, tmp_path / "images" / name)
    holed = config.model_copy(update={"amber_images": str(tmp_path / "images")})
    with pytest.raises(dg.Failure, match="AMBER_4.png: missing_file"):
        run_eval_scores(tmp_path / "store", holed, tiny_llava_dir)
    with pytest.raises(ValueError, match="source 'amber' needs its files: set amber_dir"):
        EvalConfig(source="amber", amber_images=str(IMAGES))


def test_max_images_caps_each_split() -> None:
    config = EvalConfig(source="amber", amber_dir=str(FIXTURE), amber_images=str(IMAGES), max_images=1)
    assert config.data("dev", pl.DataFrame()).ids == ["AMBER_1.png"]
    assert np.array_equal(config.data("test", pl.DataFrame()).truths, [["ship", "sea", "ship"]])
