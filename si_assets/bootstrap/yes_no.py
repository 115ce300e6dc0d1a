"""Does the seed answer yes/no questions from the image? POPE's question, asked on held-back `seed_train` images.

A seed that answers "no." (or "yes.") to everything gives the promotion gate no POPE signal and teaches the round's
yes/no probes nothing, so the bootstrap measures this before it hands the seed on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import polars as pl

from si_assets.bootstrap.sft import QA_TEMPLATE
from si_assets.evaluation.metrics import build_pope_questions, parse_yes_no, pope_scores
from si_assets.modeling.generation import generate_greedy
from si_assets.world import decode_png


@dataclass(frozen=True)
class YesNoSkill:
    accuracy: float
    yes_ratio: float
    questions: int

    def as_dict(self) -> dict[str, float]:
        return {f"yes_no_{k}": v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return f"accuracy {self.accuracy:.3f}, yes-ratio {self.yes_ratio:.2f} on {self.questions} questions"


def held_out_questions(
    rows: pl.DataFrame, kinds: Sequence[str], seed: int = 0
) -> tuple[list[int], list[str], list[bool]]:
    """POPE's questions on the rows: per image, one object it shows ('yes') and one it does not ('no') for each of
    the three strategies (random, most frequent, most co-occurring): balanced, so chance is 0.5 whatever the
    model's bias, and as hard as the evaluation's. Returns (row index, question, label) lists."""
    ids = [str(i) for i in range(rows.height)]
    questions = build_pope_questions(ids, rows["objects"].to_list(), kinds, per_image=1, seed=seed)
    return (
        [int(q.image_id) for q in questions],
        [QA_TEMPLATE.format(kind=q.object) for q in questions],
        [q.label for q in questions],
    )


def yes_no_skill(
    model, processor, rows: pl.DataFrame, kinds: Sequence[str], log: Callable[[str], None] | None = None
) -> YesNoSkill:
    """Greedy answers to POPE's questions on the rows, scored the way POPE scores them."""
    index, questions, labels = held_out_questions(rows, kinds)
    if not labels:
        raise ValueError("no held-out image has both a present and an absent object to ask about")
    images = [decode_png(b) for b in rows["image_png"]]
    answers = generate_greedy(
        model, processor, [images[i] for i in index], questions, max_new_tokens=3, log=log, desc="yes/no check"
    )
    scores = pope_scores(labels, [parse_yes_no(a) for a in answers])
    return YesNoSkill(round(scores["accuracy"], 4), round(scores["yes_ratio"], 4), len(labels))
