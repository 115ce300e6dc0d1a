"""Object hallucination metrics: CHAIR, object precision/recall/F1, and POPE yes/no probing.

Object mentions are found with a vocabulary + synonyms (CHAIR's method): each canonical object has
surface forms, multi-word forms match before single words, plurals fold to the singular.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[a-z]+")
POPE_PROMPT = "Is there a {object} in the image?"  # POPE's question (Li et al. 2023)


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def singular_words(text: str) -> list[str]:
    """The text's words, lower case, plurals folded to the singular."""
    return [_singular(w) for w in _WORD.findall(text.lower())]


class ObjectVocabulary:
    """Maps surface forms ('disc', 'dining table', 'knives') to canonical objects."""

    def __init__(self, synonyms: Mapping[str, Iterable[str]]) -> None:
        self.objects = list(synonyms)
        self._forms: dict[tuple[str, ...], str] = {}
        for canonical, forms in synonyms.items():
            for form in [canonical, *forms]:
                key = tuple(singular_words(form))
                if not key:
                    raise ValueError(f"empty synonym for {canonical!r}")
                owner = self._forms.setdefault(key, canonical)
                if owner != canonical:
                    raise ValueError(f"synonym {form!r} names both {owner!r} and {canonical!r}")
        self._max_len = max(len(k) for k in self._forms)

    @classmethod
    def from_kinds(cls, kinds: Iterable[str]) -> ObjectVocabulary:
        return cls({k: [] for k in kinds})

    def mentions(self, text: str) -> list[str]:
        """Canonical objects mentioned, in order of first mention, each once."""
        words = singular_words(text)
        found: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._max_len, len(words) - i), 0, -1):
                obj = self._forms.get(tuple(words[i : i + n]))
                if obj is not None:
                    if obj not in found:
                        found.append(obj)
                    i += n
                    break
            else:
                i += 1
        return found


@dataclass(frozen=True)
class CaptionScores:
    precision: float  # 1 - CHAIR_i
    recall: float
    f1: float
    chair_i: float
    chair_s: float
    mentions_per_caption: float
    n_captions: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def caption_scores(captions: Sequence[str], truths: Sequence[Iterable[str]], vocab: ObjectVocabulary) -> CaptionScores:
    """CHAIR_i = hallucinated mentions / all mentions; CHAIR_s = captions with any hallucination / all;
    recall = ground-truth objects mentioned / all ground-truth objects (micro-averaged)."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground-truth lists")
    if not captions:
        raise ValueError("no captions to score")
    mentioned = hallucinated = covered = gt_total = bad_captions = 0
    for caption, truth in zip(captions, truths):
        gt = set(truth)
        found = set(vocab.mentions(caption))
        wrong = found - gt
        mentioned += len(found)
        hallucinated += len(wrong)
        covered += len(found & gt)
        gt_total += len(gt)
        bad_captions += bool(wrong)
    chair_i = hallucinated / mentioned if mentioned else 0.0
    precision = 1.0 - chair_i if mentioned else 0.0
    recall = covered / gt_total if gt_total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return CaptionScores(
        precision=precision,
        recall=recall,
        f1=f1,
        chair_i=chair_i,
        chair_s=bad_captions / len(captions),
        mentions_per_caption=mentioned / len(captions),
        n_captions=len(captions),
    )


# --- POPE -------------------------------------------------------------------------------------------

POPE_STRATEGIES = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class PopeQuestion:
    image_id: str
    object: str
    label: bool  # True: the object is in the image
    strategy: str


def build_pope_questions(
    image_ids: Sequence[str],
    truths: Sequence[Sequence[str]],
    objects: Sequence[str],
    per_image: int = 3,
    seed: int = 0,
) -> list[PopeQuestion]:
    """POPE (Li et al. 2023): per image, `per_image` present objects ('yes') and as many absent ones
    ('no'), the absent ones drawn three ways — random; popular (most frequent in the data set);
    adversarial (most often co-occurring with the image's objects). Present objects are shared by the
    three strategies, so each strategy's set is balanced."""
    rng = np.random.default_rng(seed)
    frequency = Counter(o for t in truths for o in set(t))
    cooc: Counter = Counter()
    for t in truths:
        for a in set(t):
            for b in set(t):
                if a != b:
                    cooc[(a, b)] += 1
    rank = {o: i for i, o in enumerate(objects)}  # deterministic tie-break
    questions: list[PopeQuestion] = []
    for image_id, truth in zip(image_ids, truths):
        present = sorted(set(truth), key=rank.get)
        absent = [o for o in objects if o not in present]
        if not present or not absent:
            continue
        k = min(per_image, len(present), len(absent))
        yes = [present[i] for i in rng.choice(len(present), size=k, replace=False)]
        popular = sorted(absent, key=lambda o: (-frequency[o], rank[o]))[:k]
        adversarial = sorted(absent, key=lambda o: (-sum(cooc[(p, o)] for p in present), -frequency[o], rank[o]))[:k]
        random_ = [absent[i] for i in rng.choice(len(absent), size=k, replace=False)]
        for strategy, no in (("random", random_), ("popular", popular), ("adversarial", adversarial)):
            questions += [PopeQuestion(image_id, o, True, strategy) for o in yes]
            questions += [PopeQuestion(image_id, o, False, strategy) for o in no]
    return questions


def parse_yes_no(answer: str) -> bool | None:
    """POPE's rule: an answer is 'yes' if its first yes/no word is yes; None when it says neither."""
    for word in _WORD.findall(answer.lower()):
        if word in ("yes", "no", "not"):
            return word == "yes"
    return None


def pope_scores(labels: Sequence[bool], answers: Sequence[bool | None]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 with 'yes' as the positive class, and the yes-ratio.
    An answer that is neither yes nor no counts as 'no' (as POPE's own evaluation does)."""
    if len(labels) != len(answers):
        raise ValueError("labels and answers differ in length")
    if not labels:
        raise ValueError("no POPE questions")
    y = np.asarray(labels, dtype=bool)
    p = np.asarray([bool(a) for a in answers], dtype=bool)
    tp = int((y & p).sum())
    fp = int((~y & p).sum())
    fn = int((y & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": float((y == p).mean()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": float(p.mean()),
    }
