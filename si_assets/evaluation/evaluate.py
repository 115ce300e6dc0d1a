"""Evaluate one model on labeled images: captions (CHAIR, precision, recall, F1) and POPE probing; or on AMBER's
items, scored as AMBER scores them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from PIL import Image

from si_assets.evaluation.amber import QUESTION_COUNTS, Amber, amber_table
from si_assets.evaluation.metrics import (
    CAPTION_COUNTS,
    POPE_PROMPT,
    POPE_STRATEGIES,
    Mention,
    MentionFinder,
    PopeQuestion,
    build_pope_questions,
    caption_counts,
    caption_scores,
    parse_yes_no,
    pope_scores,
)
from si_assets.evaluation.uncertainty import POPE_COUNTS, counts_of, metrics_of
from si_assets.modeling.generation import generate_greedy

ANSWER_TOKENS = 4  # a yes/no answer is decided by its first words (`parse_yes_no`)


@dataclass
class EvalResult:
    metrics: dict[str, float]  # flat: precision, recall, f1, chair_s, ..., pope_f1, pope_random_f1, ...
    captions: pl.DataFrame  # id, caption, objects, mentioned, hallucinated, mentions, mention_words, counts


def evaluate_model(
    model,
    processor,
    image_ids: Sequence[str],
    images: Sequence[Image.Image],
    truths: Sequence[Sequence[str]],
    vocab: MentionFinder,
    caption_prompt: str,
    pope_per_image: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    max_new_tokens: int = 32,
    log: Callable[[str], None] | None = None,
    questions: Sequence[PopeQuestion] | None = None,
    pope_truths: Sequence[Sequence[str]] | None = None,
) -> EvalResult:
    """Captions scored with CHAIR / precision / recall against `truths`, and POPE: `questions` when given (e.g.
    POPE's published files), else built from `pope_truths` (default: `truths`; `pope_per_image`, `seed`)."""
    captions = generate_greedy(
        model, processor, images, [caption_prompt] * len(images), max_new_tokens, batch_size, log, "eval captions"
    )
    metrics = caption_scores(captions, truths, vocab).as_dict()

    if questions is None:
        asked = truths if pope_truths is None else pope_truths
        questions = build_pope_questions(image_ids, asked, vocab.objects, per_image=pope_per_image, seed=seed)
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
        max_new_tokens=ANSWER_TOKENS,
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

    found = [vocab.find(c) for c in captions]
    mentioned = [list(dict.fromkeys(m.object for m in f)) for f in found]
    table = pl.DataFrame(
        {
            "id": list(image_ids),
            "caption": captions,
            "objects": [list(t) for t in truths],
            "mentioned": mentioned,
            "hallucinated": [[m for m in ms if m not in set(t)] for ms, t in zip(mentioned, truths)],
            "mentions": [[m.object for m in f] for f in found],  # every mention, as CHAIR_i counts them
            "mention_words": [[m.word for m in f] for f in found],
        },
        schema_overrides={
            c: pl.List(pl.String) for c in ("objects", "mentioned", "hallucinated", "mentions", "mention_words")
        },
    )
    return EvalResult(metrics, table.with_columns(**image_counts(image_ids, found, truths, questions, answer)))


def evaluate_amber(
    model,
    processor,
    amber: Amber,
    images: Sequence[Image.Image],
    batch_size: int = 64,
    max_new_tokens: int = 32,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """AMBER: each image described (its description query) and asked its yes/no questions, each in AMBER's own
    words; scored as AMBER scores them (`si_assets.evaluation.amber`). The point values are the intervals' metrics
    on all images at once, so the two always agree."""
    if len(images) != len(amber.descriptions):
        raise ValueError(f"{len(images)} images but {len(amber.descriptions)} AMBER descriptions")
    by_image = dict(zip(amber.images, images))
    descriptions = generate_greedy(
        model, processor, images, [d.query for d in amber.descriptions], max_new_tokens, batch_size, log, "AMBER g"
    )
    replies = generate_greedy(
        model,
        processor,
        [by_image[q.image] for q in amber.questions],
        [q.query for q in amber.questions],
        ANSWER_TOKENS,
        batch_size,
        log,
        "AMBER d",
    )
    return score_amber(amber, descriptions, replies)


def score_amber(amber: Amber, descriptions: Sequence[str], replies: Sequence[str]) -> EvalResult:
    """AMBER's descriptions and the replies to its yes/no questions (in `amber.questions` order), scored: the
    per-image table (`amber_table`) and its metrics."""
    table = amber_table(amber, descriptions, replies)
    # no POPE strategy is asked on AMBER: its yes/no questions stand in (`amber_metrics`)
    table = table.with_columns(**{name: pl.lit(0, pl.Int32) for name in POPE_COUNTS})
    counts = counts_of(table)
    metrics = {name: float(values[0]) for name, values in metrics_of(counts, np.ones((1, table.height))).items()}
    metrics["mentions_per_caption"] = float(counts["n_mentions"].sum()) / table.height
    metrics["n_captions"] = float(table.height)
    unparsed = sum(counts[c].sum() for c in QUESTION_COUNTS if c.endswith("_other"))
    metrics["pope_unparsed"] = float(unparsed) / len(replies)
    return EvalResult(metrics, table)


def image_counts(
    image_ids: Sequence[str],
    found: Sequence[Sequence[Mention]],
    truths: Sequence[Sequence[str]],
    questions: Sequence[PopeQuestion],
    answer: dict[tuple[str, str], bool | None],
) -> dict[str, pl.Series]:
    """Per image: the caption's mentions and hallucinated mentions, its distinct objects mentioned, hallucinated,
    covered and present (`caption_counts`); POPE's true / false positives and negatives per strategy (an unparsed
    answer counts as 'no'). Every headline metric is a ratio of their sums, which is what the bootstrap intervals
    resample (`si_assets.evaluation.uncertainty`)."""
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    counts = {c: np.zeros(len(image_ids), dtype=np.int32) for c in (*CAPTION_COUNTS, *POPE_COUNTS)}
    for i, (mentions, truth) in enumerate(zip(found, truths)):
        for name, value in caption_counts(mentions, truth).items():
            counts[name][i] = value
    for q in questions:
        yes = bool(answer[(q.image_id, q.object)])
        outcome = ("tp" if yes else "fn") if q.label else ("fp" if yes else "tn")
        counts[f"pope_{q.strategy}_{outcome}"][row[q.image_id]] += 1
    return {name: pl.Series(name, values) for name, values in counts.items()}
