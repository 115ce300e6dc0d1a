"""Composed chosen responses: the verifier builds one caption per image from the segments of its samples.

Picking among whole samples keeps each sample's hallucinations with its true mentions. Composition instead
starts from nothing and adds, one at a time, the segment ("a red circle") of any of the image's samples that
raises the verifier's score of the caption most, until none raises it; segments keep their mean position in the
samples, so the caption reads in the model's own order. Started from the CLIP-best sample instead
(`from_best`), the climb may also drop a segment, which keeps more of that sample's true mentions. Judge-free:
the verifier is the same CLIP, and every segment is the model's own words. Meant for list-like captions (objects
named one by one), where a segment is a mention; free prose splits into sentences, which compose as well but
read as a list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from si_assets.organization.segments import join_segments, segment_positions, segment_texts

Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def compose_by_verifier(
    pools: dict[str, dict[str, float]],
    score: Score,
    bonus: float = 0.0,
    start: dict[str, list[str]] | None = None,
) -> dict[str, str]:
    """Per image, a hill climb over subsets of its pool (segment -> position) on score(caption) + bonus ×
    segments: from nothing, add the segment that raises it most until none does (forward selection); from
    `start` (e.g. the CLIP-best sample's segments), also drop a segment when that raises it most. All images
    advance together, one batched verifier call per step. A positive `bonus` trades precision for recall."""
    chosen: dict[str, list[str]] = {image_id: list((start or {}).get(image_id, [])) for image_id in pools}
    best = dict.fromkeys(pools, -np.inf)
    begun = [image_id for image_id in pools if chosen[image_id]]
    if begun:
        texts = [join_segments(sorted(chosen[i], key=pools[i].__getitem__)) for i in begun]
        best.update(zip(begun, score(begun, texts) + bonus * np.array([len(chosen[i]) for i in begun])))
    removals = start is not None
    active = set(pools)
    while active:
        ids, texts, moves, sizes = [], [], [], []
        for image_id in sorted(active):
            order, current = pools[image_id], chosen[image_id]
            for segment in order:
                if segment not in current:
                    parts = [*current, segment]
                elif removals and len(current) > 1:
                    parts = [p for p in current if p != segment]
                else:
                    continue
                ids.append(image_id)
                texts.append(join_segments(sorted(parts, key=order.__getitem__)))
                moves.append(segment)
                sizes.append(len(parts))
        if not ids:
            break
        values = score(ids, texts) + bonus * np.array(sizes)
        table = pl.DataFrame({"image_id": ids, "segment": moves, "value": values})
        ranked = table.sort("value", descending=True, maintain_order=True)  # ties: the earlier segment wins
        top = ranked.group_by("image_id", maintain_order=True).first()
        active = set()
        for image_id, segment, value in top.iter_rows():
            if value > best[image_id]:
                best[image_id] = value
                current = chosen[image_id]
                chosen[image_id] = [p for p in current if p != segment] if segment in current else [*current, segment]
                active.add(image_id)
    return {
        image_id: join_segments(sorted(parts, key=pools[image_id].__getitem__))
        for image_id, parts in chosen.items()
        if parts
    }


def composed_responses(
    positives: pl.DataFrame, score: Score, bonus: float = 0.0, from_best: bool = False
) -> pl.DataFrame:
    """One more scored positive per image: the composed caption, as sample number N (one past the last
    sample), with no h and no sampler seed (it was not decoded). `from_best`: the climb starts from the
    segments of the best-scored sample (needs a `score` column) and may drop them, instead of from nothing."""
    pools, start = {}, {}
    for (image_id,), group in positives.group_by("image_id", maintain_order=True):
        pools[image_id] = segment_positions(group["response"].to_list())
        if from_best:
            top = group.sort("score", "sample", descending=[True, False])["response"][0]
            start[image_id] = list(dict.fromkeys(segment_texts(top)))
    texts = compose_by_verifier(pools, score, bonus, start if from_best else None)
    rows = extra_candidates(positives, texts)
    values = score(rows["image_id"].to_list(), rows["response"].to_list()) if rows.height else []
    return rows.with_columns(score=pl.Series(values, dtype=pl.Float64))


def extra_candidates(positives: pl.DataFrame, text_by_image: dict[str, str]) -> pl.DataFrame:
    """Rows shaped like `positives` for responses that were not sampled, one per image in `text_by_image`:
    sample number N (one past the last sample), no h, no sampler seed; other columns from the image's first row."""
    rows = positives.unique("image_id", keep="first", maintain_order=True)
    rows = rows.filter(pl.col("image_id").is_in(list(text_by_image)))
    return rows.with_columns(
        response=pl.col("image_id").replace_strict(text_by_image, return_dtype=pl.String),
        sample=pl.lit(int(positives["sample"].max()) + 1, dtype=positives.schema["sample"]),
        h=pl.lit(None, dtype=positives.schema["h"]),
        seed=pl.lit(None, dtype=positives.schema["seed"]),
    )
