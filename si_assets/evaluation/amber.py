"""AMBER (Wang et al. 2023, "AMBER: An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination Evaluation") on
the user's own copy of its files, Dagster-free.

The folder is laid out as AMBER's repository (github.com/junyangwang0410/AMBER) ships it; the images come apart:

- `data/annotations.json`: [{"id", "type": "generative", "truth": [objects], "hallu": [objects]}, ...,
  {"id", "type": "discriminative-attribute-state" | ... , "truth": "yes" | "no"}, ...]
- `data/relation.json`: {object: [words that also name it]}, e.g. "person": ["people", "man", ...]
- `data/safe_words.txt`: one word a line; never counted as a hallucination (nor as covering an object)
- `data/query/query_all.json`: [{"id", "image": "AMBER_1.jpg", "query": "Describe this image."}, ...]
- the images folder (AMBER_1.jpg, ...), named separately.

Scoring follows AMBER's `inference.py`. A description's objects are its nouns (lemmatized) that appear in
relation.json; each is, in this order: a safe word (skipped), a word of an annotated object or one associated with
it (that object is covered), else a hallucination (and if it names one of the image's `hallu` objects, that one is
recognised). CHAIR = hallucinated nouns / nouns; Cover = covered `truth` entries / `truth` entries; Hal = share of
descriptions with a hallucinated noun; Cog = recognised `hallu` entries / `hallu` entries. The yes/no questions
have "no" as the positive class: precision = correct "no" answers / "no" answers, recall = correct "no" answers /
questions whose answer is no. AMBER score = (1 − CHAIR + F1) / 2. Where this departs from AMBER's code (no nltk or
spaCy): docs/metrics.md#amber.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from si_assets.evaluation.chair import singular, tokens
from si_assets.evaluation.coco import read_json
from si_assets.evaluation.metrics import CAPTION_COUNTS, Mention, harmonic_mean, parse_yes_no, ratio

ANNOTATIONS = "data/annotations.json"
RELATION = "data/relation.json"
SAFE_WORDS = "data/safe_words.txt"
QUERIES = "data/query/query_all.json"

GENERATIVE = "generative"
# AMBER's annotation types of yes/no questions; any other type is a relation question, as inference.py has it
# (its own annotations say both "discriminative-relation" and "relation").
KINDS = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
}
QUESTION_KINDS = ("existence", "state", "number", "action", "relation")
# the dimensions AMBER reports: all questions, then its evaluation args de, da (and its three kinds), dr
GROUPS: dict[str, tuple[str, ...]] = {
    "": QUESTION_KINDS,
    "existence": ("existence",),
    "attribute": ("state", "number", "action"),
    "state": ("state",),
    "number": ("number",),
    "action": ("action",),
    "relation": ("relation",),
}
TRUTHS = ("yes", "no")
ANSWERS = ("yes", "no", "other")  # "other": an answer that says neither

# Per-image counts next to CAPTION_COUNTS, which keep AMBER's generative counts (`DescriptionScore.counts`): the
# recognised `hallu` objects (Cog) and each question's truth × answer, per kind of question.
COG_COUNTS = ("amber_cog_hits", "amber_cog_objects")
QUESTION_COUNTS = tuple(
    f"amber_{kind}_{truth}_{answer}" for kind in QUESTION_KINDS for truth in TRUTHS for answer in ANSWERS
)
AMBER_COUNTS = (*COG_COUNTS, *QUESTION_COUNTS)
DISCRIMINATIVE = ("accuracy", "precision", "recall", "f1")
AMBER_METRICS = (
    "amber_chair",
    "amber_cover",
    "amber_hal",
    "amber_cog",
    "amber_score",
    "amber_yes_ratio",
    *(f"amber_{group}{'_' if group else ''}{m}" for group in GROUPS for m in DISCRIMINATIVE),
)
AMBER_HEADLINE = ("amber_chair", "amber_cover", "amber_hal", "amber_cog", "amber_f1", "amber_score")


def question_columns(group: str, truth: str | None = None, answer: str | None = None) -> list[str]:
    """The per-image count columns of a group's questions (`GROUPS`), all of them or those of one truth / answer."""
    return [
        f"amber_{kind}_{t}_{a}"
        for kind in GROUPS[group]
        for t in TRUTHS
        for a in ANSWERS
        if truth in (None, t) and answer in (None, a)
    ]


def split_of(image: str) -> Literal["dev", "test"]:
    """The split an AMBER image belongs to: dev when the SHA-256 of its file name starts with 0-7 (about half), test
    otherwise. A hash follows no order the files have, and no setting moves an image from one split to the other."""
    return "dev" if hashlib.sha256(image.encode()).hexdigest()[0] in "01234567" else "test"


# --- a description's nouns ----------------------------------------------------------------------------------------

# AMBER keeps the words nltk.pos_tag tags as nouns. Without the tagger, every word counts as a noun except where the
# word before it makes it a verb, "can" where it is the modal, and the adjectives among AMBER's words; only words in
# relation.json are counted at all, so only their uses as verbs or adjectives matter.
_VERB_AFTER = frozenset("to can could may might must shall should will would i you he she it we they".split())
_DETERMINERS = frozenset(
    "a an the this that these those each every another some any no my your his her its our their "
    "one two three four five six seven eight nine ten".split()
)
_ADJECTIVES = frozenset({"hot", "orange"})  # "a hot day", "an orange cat" ("oranges" stays a noun)
# WordNet's noun lemma is the shortest form it knows; `singular` agrees on AMBER's words but for these
_WORDNET_LEMMAS = {"people": "people"}


def lemma(word: str) -> str:
    """The noun lemma of a word as written, as nltk's WordNetLemmatizer gives it for AMBER's words. WordNet knows
    lower-case forms only and returns any other as written ("Dogs", "TV")."""
    if word != word.lower():
        return word
    return _WORDNET_LEMMAS.get(word) or singular(word)


def nouns(text: str) -> list[str]:
    """The description's nouns, lemmatized, in order, every occurrence (AMBER's `extract_nouns`)."""
    words = tokens(text)
    found = []
    for i, word in enumerate(words):
        before, low = words[i - 1].lower() if i else "", word.lower()
        if before in _VERB_AFTER or low in _ADJECTIVES or (low == "can" and before not in _DETERMINERS):
            continue
        found.append(lemma(word))
    return found


# --- a description's score ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescriptionScore:
    mentions: list[str]  # the description's nouns found in relation.json, every occurrence
    hallucinated: list[str]  # those AMBER counts as hallucinated
    covered: list[bool]  # per `truth` entry
    recognised: list[bool]  # per `hallu` entry

    def counts(self) -> dict[str, int]:
        """AMBER's counts in the product's per-image columns: CHAIR counts every noun, so a caption's mentions and
        its "objects mentioned" are both its nouns (precision = 1 − AMBER's CHAIR); recall is Cover."""
        return {
            "n_mentions": len(self.mentions),
            "n_hallucinated_mentions": len(self.hallucinated),
            "n_mentioned": len(self.mentions),
            "n_hallucinated": len(self.hallucinated),
            "n_covered": sum(self.covered),
            "n_truth": len(self.covered),
            "amber_cog_hits": sum(self.recognised),
            "amber_cog_objects": len(self.recognised),
        }


@dataclass(frozen=True)
class AmberWords:
    """relation.json and safe_words.txt: which nouns count, and what each annotated object may be called."""

    association: Mapping[str, tuple[str, ...]]
    safe: frozenset[str]

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        """Every word of relation.json, object or associated word: the only nouns AMBER counts."""
        return frozenset(self.association) | {w for words in self.association.values() for w in words}

    @property
    def objects(self) -> list[str]:
        return list(self.association)

    def mentions(self, text: str) -> list[str]:
        return [noun for noun in nouns(text) if noun in self.vocabulary]

    def find(self, text: str) -> list[Mention]:
        return [Mention(noun, noun) for noun in self.mentions(text)]

    def _words(self, objects: Sequence[str]) -> tuple[list[str], list[int]]:
        """The words that name `objects` in AMBER's order, each with the index of the object it names: every
        object's associated words first, then the objects themselves. A noun names the first object it matches
        here, so a word associated with an earlier object covers that one even where it is an object itself."""
        words = [w for obj in objects for w in self.association[obj]]
        owners = [i for i, obj in enumerate(objects) for _ in self.association[obj]]
        return words + list(objects), owners + list(range(len(objects)))

    def score(self, description: str, truth: Sequence[str], hallu: Sequence[str]) -> DescriptionScore:
        """One description against its image's annotated objects (`truth`) and likely hallucinations (`hallu`)."""
        safe_words, safe_owner = self._words(truth)
        hallu_words, hallu_owner = self._words(hallu)
        covered, recognised = [False] * len(truth), [False] * len(hallu)
        mentions = self.mentions(description)
        hallucinated = []
        for noun in mentions:
            if noun in self.safe:
                continue
            if noun in safe_words:
                covered[safe_owner[safe_words.index(noun)]] = True
                continue
            if noun in hallu_words:
                recognised[hallu_owner[hallu_words.index(noun)]] = True
            hallucinated.append(noun)
        return DescriptionScore(mentions, hallucinated, covered, recognised)


# --- the benchmark's files ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Description:
    id: int
    image: str
    query: str
    truth: tuple[str, ...]
    hallu: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    id: int
    image: str
    query: str
    kind: str  # one of QUESTION_KINDS
    truth: bool  # True: the right answer is yes


@dataclass(frozen=True)
class Amber:
    """AMBER's items: one description query per image, in id order, and the yes/no questions about the images."""

    words: AmberWords
    descriptions: tuple[Description, ...]
    questions: tuple[Question, ...]

    @property
    def images(self) -> list[str]:
        return [d.image for d in self.descriptions]

    def select(self, images: Sequence[str]) -> Amber:
        """The items of these images, in the order given."""
        by_image = {d.image: d for d in self.descriptions}
        chosen = set(images)
        questions = tuple(q for q in self.questions if q.image in chosen)
        return Amber(self.words, tuple(by_image[i] for i in images), questions)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def load_words(folder: str | Path) -> AmberWords:
    """relation.json and safe_words.txt of an AMBER folder."""
    folder = Path(folder)
    relation = read_json(folder / RELATION, "AMBER relation")
    if not isinstance(relation, dict) or not all(_strings(v) for v in relation.values()):
        raise ValueError(f"{folder / RELATION}: expected {{object: [associated words]}}")
    try:
        safe = (folder / SAFE_WORDS).read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"AMBER safe words file {folder / SAFE_WORDS} does not exist") from None
    return AmberWords({k: tuple(v) for k, v in relation.items()}, frozenset(w for w in safe if w))


def load_amber(folder: str | Path) -> Amber:
    """The AMBER files in `folder` (the layout above). A file that is missing or not in AMBER's format is an error
    naming it and, where an item is wrong, the item's id."""
    folder = Path(folder)
    words = load_words(folder)
    annotations = read_json(folder / ANNOTATIONS, "AMBER annotations")
    queries = read_json(folder / QUERIES, "AMBER queries")
    for path, items in ((ANNOTATIONS, annotations), (QUERIES, queries)):
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), int) for i in items):
            raise ValueError(f"{folder / path}: expected a list of items, each with an integer id")
    by_id: dict[int, dict] = {}
    for item in annotations:
        if item["id"] in by_id:
            raise ValueError(f"{folder / ANNOTATIONS}: id {item['id']} twice")
        by_id[item["id"]] = item
    descriptions: dict[str, Description] = {}
    questions = []
    for query in sorted(queries, key=lambda q: q["id"]):
        where = f"{folder / QUERIES}: id {query['id']}"
        if not isinstance(query.get("image"), str) or not isinstance(query.get("query"), str):
            raise ValueError(f"{where} needs an image and a query")
        annotation = by_id.get(query["id"])
        if annotation is None:
            raise ValueError(f"{where} has no annotation in {folder / ANNOTATIONS}")
        where = f"{folder / ANNOTATIONS}: id {query['id']}"
        if annotation.get("type") == GENERATIVE:
            truth, hallu = annotation.get("truth"), annotation.get("hallu")
            if not _strings(truth) or not _strings(hallu):
                raise ValueError(f"{where}: a generative item needs 'truth' and 'hallu' lists of objects")
            unknown = [w for w in (*truth, *hallu) if w not in words.association]
            if unknown:
                raise ValueError(f"{where}: {unknown[0]!r} is not an object of {folder / RELATION}")
            if query["image"] in descriptions:
                raise ValueError(f"{where}: {query['image']} has a description query already")
            descriptions[query["image"]] = Description(
                query["id"], query["image"], query["query"], tuple(truth), tuple(hallu)
            )
        else:
            if annotation.get("truth") not in ("yes", "no"):
                raise ValueError(f"{where}: a yes/no question's truth must be 'yes' or 'no'")
            kind = KINDS.get(annotation.get("type"), "relation")
            questions.append(Question(query["id"], query["image"], query["query"], kind, annotation["truth"] == "yes"))
    undescribed = sorted({q.image for q in questions} - set(descriptions))
    if undescribed:
        raise ValueError(f"{folder / QUERIES}: questions about images without a description query: {undescribed[:5]}")
    return Amber(words, tuple(descriptions.values()), tuple(questions))


# --- scores -------------------------------------------------------------------------------------------------------


def answer_name(answer: bool | None) -> str:
    return "other" if answer is None else "yes" if answer else "no"


def amber_table(amber: Amber, descriptions: Sequence[str], replies: Sequence[str]) -> pl.DataFrame:
    """Per image: its description scored, its questions and the replies, and the per-image counts every AMBER
    metric is a ratio of (`amber_metrics`). `replies` answer `amber.questions`, in order. AMBER's scorer takes the
    reply "Yes" or "No" and counts anything else as wrong and as no "no"; a model's free reply is read as yes, no or
    neither by its first yes/no word (`parse_yes_no`), as POPE reads it."""
    if len(descriptions) != len(amber.descriptions) or len(replies) != len(amber.questions):
        raise ValueError("one description per image and one reply per question")
    answers = [parse_yes_no(reply) for reply in replies]
    row = {image: i for i, image in enumerate(amber.images)}
    counts = {name: np.zeros(len(row), dtype=np.int32) for name in (*CAPTION_COUNTS, *AMBER_COUNTS)}
    scores = [amber.words.score(text, d.truth, d.hallu) for text, d in zip(descriptions, amber.descriptions)]
    for i, score in enumerate(scores):
        for name, value in score.counts().items():
            counts[name][i] = value
    asked: list[list[str]] = [[] for _ in row]
    said: list[list[str]] = [[] for _ in row]
    for question, answer, reply in zip(amber.questions, answers, replies):
        counts[f"amber_{question.kind}_{answer_name(question.truth)}_{answer_name(answer)}"][row[question.image]] += 1
        asked[row[question.image]].append(question.query)
        said[row[question.image]].append(reply)
    table = pl.DataFrame(
        {
            "id": amber.images,
            "caption": list(descriptions),
            "objects": [list(d.truth) for d in amber.descriptions],
            "hallu": [list(d.hallu) for d in amber.descriptions],
            "mentions": [s.mentions for s in scores],
            "hallucinated": [s.hallucinated for s in scores],
            "questions": asked,
            "replies": said,
        },
        schema_overrides={
            c: pl.List(pl.String) for c in ("objects", "hallu", "mentions", "hallucinated", "questions", "replies")
        },
    )
    return table.with_columns(**{name: pl.Series(name, values) for name, values in counts.items()})


def amber_metrics(
    counts: Mapping[str, np.ndarray], weights: np.ndarray, total: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """AMBER's metrics under each row of image `weights`, from `total` (the weighted sums of every per-image count);
    `counts`, the counts themselves, say which kinds of question were asked: a group nobody was asked about has no
    metrics. Also the POPE figures the promotion gate reads, as AMBER's discriminative ones (docs/metrics.md#amber)."""
    chair = ratio(total["n_hallucinated_mentions"], total["n_mentions"])
    out = {
        "amber_chair": chair,
        "amber_cover": ratio(total["n_covered"], total["n_truth"]),
        "amber_hal": ratio(weights @ (counts["n_hallucinated_mentions"] > 0), weights.sum(axis=1)),
        "amber_cog": ratio(total["amber_cog_hits"], total["amber_cog_objects"]),
    }
    for group in GROUPS:
        if not any(counts[name].any() for name in question_columns(group)):
            continue
        n = {(t, a): sum(total[name] for name in question_columns(group, t, a)) for t in TRUTHS for a in ANSWERS}
        asked = sum(n.values())
        precision = ratio(n["no", "no"], n["yes", "no"] + n["no", "no"])  # "no" is AMBER's positive answer
        recall = ratio(n["no", "no"], n["no", "yes"] + n["no", "no"] + n["no", "other"])
        prefix = f"amber_{group}_" if group else "amber_"
        out[f"{prefix}accuracy"] = ratio(n["yes", "yes"] + n["no", "no"], asked)
        out[f"{prefix}precision"] = precision
        out[f"{prefix}recall"] = recall
        out[f"{prefix}f1"] = harmonic_mean(precision, recall)
        if not group:
            out["amber_yes_ratio"] = ratio(n["yes", "yes"] + n["no", "yes"], asked)
    f1 = out.get("amber_f1", np.zeros(len(weights)))
    out["amber_score"] = (1.0 - chair + f1) / 2
    # What the gate reads: POPE's figures are AMBER's over all its yes/no questions; precision (1 − CHAIR) and recall
    # (Cover) come from the caption counts as AMBER fills them (`DescriptionScore.counts`).
    for name in (*DISCRIMINATIVE, "yes_ratio"):
        out[f"pope_{name}"] = out.get(f"amber_{name}", np.zeros(len(weights)))
    return out
