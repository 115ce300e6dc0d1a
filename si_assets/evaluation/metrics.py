"""Object hallucination metrics: CHAIR, object precision/recall/F1, and POPE yes/no probing.

A caption's object mentions come from a `MentionFinder`: the embedded world's `ObjectVocabulary` (each object
once per caption: canonical names plus synonyms, multi-word forms first, plurals folded), or CHAIR's rules for
COCO-style data (`si_assets.evaluation.chair`: every mention counts).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

_WORD = re.compile(r"[a-z]+")
POPE_PROMPT = "Is there a {object} in the image?"  # POPE's question (Li et al. 2023)


@dataclass(frozen=True)
class Mention:
    word: str  # the words as matched, singular ("knife", "dining table")
    object: str  # the canonical object they name


class MentionFinder(Protocol):
    """What finds the objects a caption names."""

    objects: list[str]  # every canonical object, in a fixed order (POPE draws absent objects from it)

    def find(self, text: str) -> list[Mention]: ...


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
    """Maps surface forms ('disc', 'dining table', 'knives') to canonical objects; each object counts once per
    caption (the embedded world's metric)."""

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

    def find(self, text: str) -> list[Mention]:
        """Each object mentioned, once, at its first mention, longest form first."""
        words = singular_words(text)
        found: dict[str, Mention] = {}
        i = 0
        while i < len(words):
            for n in range(min(self._max_len, len(words) - i), 0, -1):
                form = tuple(words[i : i + n])
                obj = self._forms.get(form)
                if obj is not None:
                    found.setdefault(obj, Mention(" ".join(form), obj))
                    i += n
                    break
            else:
                i += 1
        return list(found.values())

    def mentions(self, text: str) -> list[str]:
        """Canonical objects mentioned, in order of first mention, each once."""
        return [m.object for m in self.find(text)]


def hallucinated(found: Sequence[Mention], truth: Iterable[str]) -> list[Mention]:
    """The mentions of objects that are not in the ground truth, every one of them."""
    present = set(truth)
    return [m for m in found if m.object not in present]


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0 (a metric over nothing)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def harmonic_mean(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F1, elementwise; 0 where both are 0."""
    return ratio(2 * precision * recall, precision + recall)


# Per-caption counts; every caption metric is a ratio of their sums (`si_assets.evaluation.uncertainty`).
CAPTION_COUNTS = ("n_mentions", "n_hallucinated_mentions", "n_mentioned", "n_hallucinated", "n_covered", "n_truth")


def caption_counts(found: Sequence[Mention], truth: Iterable[str]) -> dict[str, int]:
    """Mentions and hallucinated mentions (CHAIR_i counts every one); distinct objects mentioned, hallucinated
    and covered (precision and recall count each object once); objects present."""
    present, named = set(truth), {m.object for m in found}
    return {
        "n_mentions": len(found),
        "n_hallucinated_mentions": len(hallucinated(found, present)),
        "n_mentioned": len(named),
        "n_hallucinated": len(named - present),
        "n_covered": len(named & present),
        "n_truth": len(present),
    }


@dataclass(frozen=True)
class CaptionScores:
    precision: float  # distinct objects named that are present / distinct objects named
    recall: float
    f1: float
    chair_i: float  # hallucinated mentions / mentions
    chair_s: float
    mentions_per_caption: float
    n_captions: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def caption_scores(captions: Sequence[str], truths: Sequence[Iterable[str]], vocab: MentionFinder) -> CaptionScores:
    """CHAIR_i = hallucinated mentions / all mentions (micro-averaged); CHAIR_s = captions with any hallucination /
    all; precision = distinct objects named that are present / distinct objects named, summed over captions;
    recall = ground-truth objects named / all ground-truth objects. With a finder that reports each object once
    per caption (the world's vocabulary), precision = 1 - CHAIR_i."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground-truth lists")
    if not captions:
        raise ValueError("no captions to score")
    per_caption = [caption_counts(vocab.find(c), t) for c, t in zip(captions, truths)]
    total = {name: sum(c[name] for c in per_caption) for name in CAPTION_COUNTS}
    mentions, mentioned = total["n_mentions"], total["n_mentioned"]
    chair_i = total["n_hallucinated_mentions"] / mentions if mentions else 0.0
    precision = 1.0 - total["n_hallucinated"] / mentioned if mentioned else 0.0
    recall = total["n_covered"] / total["n_truth"] if total["n_truth"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return CaptionScores(
        precision=precision,
        recall=recall,
        f1=f1,
        chair_i=chair_i,
        chair_s=sum(c["n_hallucinated_mentions"] > 0 for c in per_caption) / len(captions),
        mentions_per_caption=mentions / len(captions),
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


class AbsentObjects:
    """POPE's ways to pick objects an image does not show, from a data set's ground truth: random; popular (most
    frequent in the data set); adversarial (most often co-occurring with the image's objects)."""

    def __init__(self, truths: Sequence[Sequence[str]], objects: Sequence[str]) -> None:
        self.objects = list(objects)
        self.frequency = Counter(o for t in truths for o in set(t))
        self.cooccurrence: Counter = Counter()
        for t in truths:
            for a in set(t):
                for b in set(t):
                    if a != b:
                        self.cooccurrence[(a, b)] += 1
        self.rank = {o: i for i, o in enumerate(self.objects)}  # deterministic tie-break

    def absent(self, present: Sequence[str]) -> list[str]:
        return [o for o in self.objects if o not in present]

    def popular(self, absent: Sequence[str], k: int) -> list[str]:
        return sorted(absent, key=lambda o: (-self.frequency[o], self.rank[o]))[:k]

    def adversarial(self, present: Sequence[str], absent: Sequence[str], k: int) -> list[str]:
        def key(o: str) -> tuple[int, int, int]:
            return -sum(self.cooccurrence[(p, o)] for p in present), -self.frequency[o], self.rank[o]

        return sorted(absent, key=key)[:k]

    def pick(
        self, strategy: str, present: Sequence[str], absent: Sequence[str], k: int, rng: np.random.Generator
    ) -> list[str]:
        if strategy == "random":
            return [absent[i] for i in rng.choice(len(absent), size=k, replace=False)]
        if strategy == "popular":
            return self.popular(absent, k)
        if strategy == "adversarial":
            return self.adversarial(present, absent, k)
        raise ValueError(f"unknown POPE strategy {strategy!r}; known: {', '.join(POPE_STRATEGIES)}")


def build_pope_questions(
    image_ids: Sequence[str],
    truths: Sequence[Sequence[str]],
    objects: Sequence[str],
    per_image: int = 3,
    seed: int = 0,
) -> list[PopeQuestion]:
    """POPE (Li et al. 2023): per image, `per_image` present objects ('yes') and as many absent ones
    ('no'), the absent ones drawn three ways (`AbsentObjects`). Present objects are shared by the
    three strategies, so each strategy's set is balanced."""
    rng = np.random.default_rng(seed)
    pick = AbsentObjects(truths, objects)
    questions: list[PopeQuestion] = []
    for image_id, truth in zip(image_ids, truths):
        present = sorted(set(truth), key=pick.rank.get)
        absent = pick.absent(present)
        if not present or not absent:
            continue
        k = min(per_image, len(present), len(absent))
        yes = [present[i] for i in rng.choice(len(present), size=k, replace=False)]
        popular = pick.popular(absent, k)
        adversarial = pick.adversarial(present, absent, k)
        random_ = pick.pick("random", present, absent, k, rng)
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
