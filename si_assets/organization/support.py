"""Chosen captions cut to what region support finds (`min_region_support`).

CLIP's whole-image score reads a caption in context and believes the objects that usually come with the ones in
the picture; the better the model, the more of its remaining hallucinations are of that kind, and the fewer the
score can see (docs/results.md, "What a second round needs: region support"). Region support
(si_assets/verifier/regions.py) asks about one object in one part of the image at a time. A chosen caption cut to the
segments whose object CLIP finds in some window either replaces the chosen one (`cut`) or is chosen over it in one
more pair (`add`); the yes/no probes restate the cut captions. Judge-free: the same CLIP, and every phrase is the
model's own. Meant for list-like captions, where a segment names one object, its head noun (the last word).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl
from PIL import Image

from si_assets.evaluation.metrics import singular_words
from si_assets.organization.segments import join_segments, segment_texts
from si_assets.verifier.clip import ClipScorer
from si_assets.verifier.regions import object_support

Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]
SupportOf = Callable[[str, str], float]  # (image id, segment) -> support in [0, 1]
RegionPairs = Literal["cut", "add"]
REGION_CUT = "region"  # rejected_source of a pair whose rejected side is the whole chosen caption


def segment_object(segment: str) -> str | None:
    """The object a list segment names: its head noun, singular ("a red circle" -> "circle")."""
    words = singular_words(segment)
    return words[-1] if words else None


def region_support_of(
    scorer: ClipScorer, images: Mapping[str, Image.Image], texts_by_image: Mapping[str, Sequence[str]], window: float
) -> SupportOf:
    """Support of each (image, segment) for the segments of `texts_by_image`: CLIP classifies every window of
    the image among all their distinct segments, and a segment's support is its object's best window share."""
    texts = [text for image_texts in texts_by_image.values() for text in image_texts]
    phrases = sorted({segment.rstrip(".") + "." for text in texts for segment in segment_texts(text)})
    objects = [segment_object(p) for p in phrases]
    named = [(p, o) for p, o in zip(phrases, objects) if o is not None]
    image_ids = list(texts_by_image)
    if not named:
        return lambda image_id, segment: 1.0
    support, columns = object_support(
        scorer, [images[i] for i in image_ids], [p for p, _ in named], [o for _, o in named], window
    )
    row, column = {i: k for k, i in enumerate(image_ids)}, {o: k for k, o in enumerate(columns)}

    def support_of(image_id: str, segment: str) -> float:
        obj = segment_object(segment)
        return float(support[row[image_id], column[obj]]) if obj in column else 1.0  # no object: nothing to check

    return support_of


def drop_unsupported(
    pairs: pl.DataFrame, support_of: SupportOf, threshold: float, score: Score, mode: RegionPairs = "cut"
) -> pl.DataFrame:
    """Chosen captions without their segments of support under `threshold`, rescored by CLIP; a caption none of
    whose segments reaches it stays whole (nothing is left to train towards). `unsupported_dropped` counts the
    segments each lost. mode `cut`: the cut caption replaces the chosen one; `add`: the pairs stay, and each cut
    caption is chosen in one more pair against its whole caption (pair id `<pair id>/region`, task `region`), so the
    pairs rank cut > whole > negative, and the new pair differs only in the unsupported objects."""
    cut, dropped = [], []
    for image_id, text in pairs.select("image_id", "chosen").iter_rows():
        parts = segment_texts(text)
        kept = [p for p in parts if support_of(image_id, p) >= threshold]
        shorter = bool(kept) and len(kept) < len(parts)
        cut.append(join_segments(kept) if shorter else text)
        dropped.append(len(parts) - len(kept) if shorter else 0)
    changed = [k for k, n in enumerate(dropped) if n]
    scores = pairs["score_chosen"].to_numpy().copy()
    if changed:
        scores[changed] = score([pairs["image_id"][k] for k in changed], [cut[k] for k in changed])
    edited = pairs.with_columns(
        chosen=pl.Series(cut, dtype=pl.String),
        score_chosen=pl.Series(scores, dtype=pl.Float64),
        unsupported_dropped=pl.Series(dropped, dtype=pl.Int32),
    )
    if mode == "cut":
        return edited
    if mode != "add":
        raise ValueError(f"unknown region pairs mode {mode!r}; use 'cut' or 'add'")
    extra = edited[changed].with_columns(
        rejected=pairs["chosen"].gather(changed),
        score_rejected=pairs["score_chosen"].gather(changed),
        rejected_source=pl.lit(REGION_CUT),
        pair_id=pl.format("{}/" + REGION_CUT, pl.col("pair_id")),
        task=pl.lit(REGION_CUT),
    )
    # The new pairs come first: the yes/no probes restate an image's first pair of the best rank, its cut caption.
    return pl.concat([extra, pairs.with_columns(unsupported_dropped=pl.lit(0, pl.Int32))], how="diagonal_relaxed")


def region_support_edit(
    scorer: ClipScorer, images: Mapping[str, Image.Image], threshold: float, window: float, mode: RegionPairs
) -> Callable[[pl.DataFrame, Score], pl.DataFrame]:
    """The pair edit of `min_region_support`: the support of the pairs' own segments, then `drop_unsupported`."""

    def edit(pairs: pl.DataFrame, score: Score) -> pl.DataFrame:
        texts: dict[str, list[str]] = {}
        for image_id, chosen, rejected in pairs.select("image_id", "chosen", "rejected").iter_rows():
            texts.setdefault(image_id, []).extend([chosen, rejected])
        return drop_unsupported(pairs, region_support_of(scorer, images, texts, window), threshold, score, mode)

    return edit
