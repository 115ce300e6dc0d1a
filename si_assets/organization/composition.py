"""Composed chosen responses: the verifier builds one caption per image from the segments of its samples.

Picking among whole samples keeps each sample's hallucinations with its true mentions. Composition instead
starts from nothing and adds, one at a time, the segment ("a red circle") of any of the image's samples that
raises the verifier's score of the caption most, until none raises it; segments keep their mean position in the
samples, so the caption reads in the model's own order. Judge-free: the verifier is the same CLIP, and every
segment is the model's own words. Meant for list-like captions (objects named one by one), where a segment is a
mention; free prose splits into sentences, which compose as well but read as a list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from si_assets.organization.segments import join_segments, segment_positions

Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def compose_by_verifier(pools: dict[str, dict[str, float]], score: Score, bonus: float = 0.0) -> dict[str, str]:
    """Per image, forward selection over its pool (segment -> position): from nothing, add the segment that
    raises score(caption) + bonus × segments most, until none raises it. All images advance together, one
    batched verifier call per step. A positive `bonus` trades precision for recall (more segments get in)."""
    chosen: dict[str, list[str]] = {image_id: [] for image_id in pools}
    best = dict.fromkeys(pools, -np.inf)
    active = set(pools)
    while active:
        ids, texts, added = [], [], []
        for image_id in sorted(active):
            order = pools[image_id]
            for segment in order:
                if segment not in chosen[image_id]:
                    ids.append(image_id)
                    texts.append(join_segments(sorted([*chosen[image_id], segment], key=order.__getitem__)))
                    added.append(segment)
        if not ids:
            break
        sizes = np.array([len(chosen[image_id]) + 1 for image_id in ids])
        table = pl.DataFrame({"image_id": ids, "segment": added, "value": score(ids, texts) + bonus * sizes})
        ranked = table.sort("value", descending=True, maintain_order=True)  # ties: the earlier segment wins
        top = ranked.group_by("image_id", maintain_order=True).first()
        active = set()
        for image_id, segment, value in top.iter_rows():
            if value > best[image_id]:
                best[image_id] = value
                chosen[image_id].append(segment)
                active.add(image_id)
    return {
        image_id: join_segments(sorted(parts, key=pools[image_id].__getitem__))
        for image_id, parts in chosen.items()
        if parts
    }


def composed_responses(positives: pl.DataFrame, score: Score, bonus: float = 0.0) -> pl.DataFrame:
    """One more scored positive per image: the composed caption, as sample number N (one past the last
    sample), with no h and no sampler seed (it was not decoded)."""
    pools = {
        image_id: segment_positions(group["response"].to_list())
        for (image_id,), group in positives.group_by("image_id", maintain_order=True)
    }
    texts = compose_by_verifier(pools, score, bonus)
    if not texts:
        return positives.clear()
    rows = positives.unique("image_id", keep="first", maintain_order=True).filter(pl.col("image_id").is_in(texts))
    ids = rows["image_id"].to_list()
    composed = [texts[image_id] for image_id in ids]
    return rows.with_columns(
        response=pl.Series(composed, dtype=pl.String),
        sample=pl.lit(int(positives["sample"].max()) + 1, dtype=positives.schema["sample"]),
        h=pl.lit(None, dtype=positives.schema["h"]),
        seed=pl.lit(None, dtype=positives.schema["seed"]),
        score=pl.Series(score(ids, composed), dtype=pl.Float64),
    )
