"""Evaluate one model on labeled images: captions (CHAIR, precision, recall, F1) and POPE probing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from PIL import Image

from si_assets.evaluation.metrics import (
    POPE_PROMPT,
    POPE_STRATEGIES,
    ObjectVocabulary,
    PopeQuestion,
    build_pope_questions,
    caption_scores,
    parse_yes_no,
    pope_scores,
)
from si_assets.evaluation.uncertainty import CAPTION_COUNTS, POPE_COUNTS
from si_assets.modeling.generation import generate_greedy


@dataclass
class EvalResult:
    metrics: dict[str, float]  # flat: precision, recall, f1, chair_s, ..., pope_f1, pope_random_f1, ...
    captions: pl.DataFrame  # id, caption, objects, mentioned, hallucinated


def evaluate_model(
    model,
    processor,
    image_ids: Sequence[str],
    images: Sequence[Image.Image],
    truths: Sequence[Sequence[str]],
    vocab: ObjectVocabulary,
    caption_prompt: str,
    pope_per_image: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    max_new_tokens: int = 32,
    log: Callable[[str], None] | None = None,
    questions: Sequence[PopeQuestion] | None = None,
) -> EvalResult:
    """Captions scored with CHAIR / precision / recall against `truths`, and POPE: `questions` when given (e.g.
    POPE's published files), else built from the ground truth (`pope_per_image`, `seed`)."""
    captions = generate_greedy(
        model, processor, images, [caption_prompt] * len(images), max_new_tokens, batch_size, log, "eval captions"
    )
    metrics = caption_scores(captions, truths, vocab).as_dict()

    if questions is None:
        questions = build_pope_questions(image_ids, truths, vocab.objects, per_image=pope_per_image, seed=seed)
    if not questions:
        raise ValueError("no POPE questions: the evaluation images have no annotated objects to ask about")
    by_id = dict(zip(image_ids, images))
    unknown = {q.image_id for q in questions} - set(by_id)
    if unknown:
        example = sorted(unknown)[:3]
        raise ValueError(f"POPE questions ask about {len(unknown)} images not in the evaluation set, e.g. {example}")
    # The three strategies share their 'yes' questions: ask each distinct (image, object) once.
    distinct = sorted({(q.image_id, q.object) for q in questions})
    answers_text = generate_greedy(
        model,
        processor,
        [by_id[i] for i, _ in distinct],
        [POPE_PROMPT.format(object=o) for _, o in distinct],
        max_new_tokens=4,
        batch_size=batch_size,
        log=log,
        desc="eval POPE",
    )
    answer = {key: parse_yes_no(text) for key, text in zip(distinct, answers_text)}
    per_strategy = {}
    for strategy in [s for s in POPE_STRATEGIES if any(q.strategy == s for q in questions)]:
        qs = [q for q in questions if q.strategy == strategy]
        per_strategy[strategy] = pope_scores([q.label for q in qs], [answer[(q.image_id, q.object)] for q in qs])
        for name, value in per_strategy[strategy].items():
            metrics[f"pope_{strategy}_{name}"] = value
    for name in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        metrics[f"pope_{name}"] = sum(s[name] for s in per_strategy.values()) / len(per_strategy)
    metrics["pope_unparsed"] = sum(a is None for a in answer.values()) / max(1, len(answer))

    mentioned = [vocab.mentions(c) for c in captions]
    table = pl.DataFrame(
        {
            "id": list(image_ids),
            "caption": captions,
            "objects": [list(t) for t in truths],
            "mentioned": mentioned,
            "hallucinated": [[m for m in ms if m not in set(t)] for ms, t in zip(mentioned, truths)],
        }
    )
    return EvalResult(metrics, table.with_columns(**image_counts(image_ids, mentioned, truths, questions, answer)))


def image_counts(
    image_ids: Sequence[str],
    mentioned: Sequence[Sequence[str]],
    truths: Sequence[Sequence[str]],
    questions: Sequence[PopeQuestion],
    answer: dict[tuple[str, str], bool | None],
) -> dict[str, pl.Series]:
    """Per image: distinct objects mentioned, hallucinated, covered and present; POPE's true / false positives and
    negatives per strategy (an unparsed answer counts as 'no'). Every headline metric is a ratio of their sums,
    which is what the bootstrap intervals resample (`si_assets.evaluation.uncertainty`)."""
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    counts = {c: np.zeros(len(image_ids), dtype=np.int32) for c in (*CAPTION_COUNTS, *POPE_COUNTS)}
    for i, (said, truth) in enumerate(zip(mentioned, truths)):
        found, present = set(said), set(truth)
        counts["n_mentioned"][i], counts["n_hallucinated"][i] = len(found), len(found - present)
        counts["n_covered"][i], counts["n_truth"][i] = len(found & present), len(present)
    for q in questions:
        yes = bool(answer[(q.image_id, q.object)])
        outcome = ("tp" if yes else "fn") if q.label else ("fp" if yes else "tn")
        counts[f"pope_{q.strategy}_{outcome}"][row[q.image_id]] += 1
    return {name: pl.Series(name, values) for name, values in counts.items()}
