"""Omission pairs (`omission_share`): the counterweight that keeps a round from learning to leave objects out.

A caption pair pushes up the objects its chosen side names and down the ones its rejected side names. Summed over a
round's pairs, the push on an object's name is far from zero: the hallucinated negatives name nearly every kind more
often than the chosen captions do (with the grounded consensus, the kinds CLIP confuses most of all), so besides
which object belongs in which image, DPO learns to say each kind less, and the trained model leaves out true objects
of the kinds pushed down the most (docs/results.md, "What a round learns to leave out"). An omission pair prefers a
chosen caption to the same caption with one of its objects left out: it pushes that one name up, on an image the
chosen side says holds it, and nothing else (the rest of the caption is on both sides). Omission pairs are added per
object until they make up `share` of the net push down the caption pairs give it. Judge-free and label-free: the
objects are the chosen captions' own, and only omissions the verifier scores below the whole caption are used (it
sees something missing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from si_assets.collection.sampling import stable_seed
from si_assets.organization.segments import join_segments, segment_texts
from si_assets.organization.support import segment_object
from si_assets.organization.verification import DISCARDED, KEPT

Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]
OMISSION = "omission"  # the task and rejected_source of an omission pair


def named_objects(text: str) -> set[str]:
    """The objects a list-like caption names, one per segment (its head noun)."""
    return {obj for obj in map(segment_object, segment_texts(text)) if obj is not None}


def name_push(pairs: pl.DataFrame) -> Counter[str]:
    """Per object: how many of `pairs` name it on the chosen side, minus how many name it on the rejected side."""
    push: Counter[str] = Counter()
    for chosen, rejected in pairs.select("chosen", "rejected").iter_rows():
        push.update(named_objects(chosen))
        push.subtract(named_objects(rejected))
    return push


def omissions(text: str) -> dict[str, str]:
    """Per object `text` names, `text` without that object's segments; empty for a caption of fewer than two
    objects (leaving the only one out leaves nothing to prefer it to)."""
    parts = segment_texts(text)
    objects = [segment_object(p) for p in parts]
    named = {obj for obj in objects if obj is not None}
    if len(named) < 2:
        return {}
    return {obj: join_segments([p for p, o in zip(parts, objects) if o != obj]) for obj in sorted(named)}


def omission_pairs(
    pairs: pl.DataFrame, score: Score, share: float, seed: int, source_task: str | None = None
) -> pl.DataFrame:
    """Omission pairs for the training caption pairs `pairs` (image_id, pair_id, chosen, rejected, score_chosen,
    ..., task): for each object the pairs push down on balance, `share` of that push in pairs that prefer a distinct
    chosen caption naming it to the caption without it, drawn at random (`seed`) among the omissions the verifier
    scores below their caption. The chosen captions are those of every pair, or of the pairs of `source_task` only.
    An object with too few such captions gets what there is."""
    offsets = {obj: round(-share * n) for obj, n in name_push(pairs).items()}
    wanted = {obj: k for obj, k in offsets.items() if k > 0}
    sources = pairs if source_task is None else pairs.filter(pl.col("task") == source_task)
    sources = sources.unique(["image_id", "chosen"], keep="first", maintain_order=True)
    rows, objects, texts = [], [], []
    for row, text in enumerate(sources["chosen"]):
        for obj, shorter in omissions(text).items():
            if obj in wanted:
                rows.append(row)
                objects.append(obj)
                texts.append(shorter)
    if not texts:
        return pairs.clear()
    candidates = pl.DataFrame(
        {
            "row": rows,
            "object": objects,
            "rejected": texts,
            "score_rejected": score(sources["image_id"].gather(rows).to_list(), texts),
            "score_chosen": sources["score_chosen"].gather(rows),
        },
        schema_overrides={"score_rejected": pl.Float64},
    ).filter(pl.col("score_rejected") < pl.col("score_chosen"))
    rng = np.random.default_rng(stable_seed(OMISSION, seed))
    drawn = []
    for obj in sorted(wanted):
        held = candidates.filter(pl.col("object") == obj)
        drawn.append(held[rng.permutation(held.height)[: wanted[obj]]])
    picked = pl.concat(drawn).sort("row", "object")
    return sources[picked["row"]].with_columns(
        rejected=picked["rejected"],
        score_rejected=picked["score_rejected"],
        decision=pl.lit(KEPT),
        rejected_source=pl.lit(OMISSION),
        task=pl.lit(OMISSION),
        pair_id=pl.concat_str(pl.col("pair_id"), pl.lit(f"/{OMISSION}/"), pl.lit(picked["object"])),
    )


def omission_edit(
    share: float, seed: int, source_task: str | None = None
) -> Callable[[pl.DataFrame, Score], pl.DataFrame]:
    """The pair edit of `omission_share` (and `omission_source`): the caption pairs, then their omission pairs
    (after them, so the yes/no probes restate the caption pairs as before)."""

    def edit(pairs: pl.DataFrame, score: Score) -> pl.DataFrame:
        added = omission_pairs(pairs.filter(pl.col("decision") != DISCARDED), score, share, seed, source_task)
        return pl.concat([pairs, added], how="diagonal_relaxed")

    return edit
