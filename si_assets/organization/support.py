"""Chosen captions cut to what region support finds (`min_region_support`).

CLIP's whole-image score reads a caption in context and believes the objects that usually come with the ones in
the picture; the better the model, the more of its remaining hallucinations are of that kind, and the fewer the
score can see (docs/results.md, "What a second round needs: region support"). Region support
(si_assets/verifier/regions.py) asks about one object in one part of the image at a time. A chosen caption cut to the
segments whose object CLIP finds in some window either replaces the chosen one (`cut`) or is chosen over it in one
more pair (`add`); the yes/no probes restate the cut captions. A cut can only remove objects; the grounded consensus
(`region_caption: consensus`) also brings back the true ones the chosen caption left out: it names every object that
enough of the image's samples name (the model's self-consistency) and CLIP finds in a window (region support), two
signals that err on different objects (a usual partner is named often but found nowhere; a kind CLIP confuses is
found but seldom named). Judge-free: the same CLIP, and every phrase is the model's own. Meant for list-like
captions, where a segment names one object, its head noun (the last word).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl
from PIL import Image

from si_assets.evaluation.metrics import singular_words
from si_assets.organization.segments import join_segments, segment_positions, segment_texts
from si_assets.verifier.clip import ClipScorer
from si_assets.verifier.regions import object_support

Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]
SupportOf = Callable[[str, str], float]  # (image id, segment) -> support in [0, 1]
RegionPairs = Literal["cut", "add"]
RegionCaption = Literal["chosen", "consensus"]
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
    whose segments reaches it stays whole (nothing is left to train towards). See `replace_chosen` for `mode`."""
    captions = []
    for image_id, text in pairs.select("image_id", "chosen").iter_rows():
        parts = segment_texts(text)
        kept = [p for p in parts if support_of(image_id, p) >= threshold]
        captions.append(join_segments(kept) if 0 < len(kept) < len(parts) else text)
    return replace_chosen(pairs, captions, score, mode)


def grounded_consensus(
    samples: pl.DataFrame, support_of: SupportOf, min_support: float, min_share: float
) -> dict[str, str]:
    """Per image of `samples` (image_id, response), a caption of the objects that at least `min_share` of its
    samples name and whose region support reaches `min_support`, each in the phrase the samples use most for it, in
    the samples' mean order. Images with no such object are left out."""
    captions = {}
    for (image_id,), group in samples.group_by("image_id", maintain_order=True):
        texts = group["response"].to_list()
        named: Counter[str] = Counter()  # object -> samples naming it
        phrases: dict[str, Counter[str]] = {}  # object -> phrase -> samples using it
        for text in texts:
            by_object = {segment_object(p): p for p in reversed(segment_texts(text))}  # an object's first phrase
            by_object.pop(None, None)
            named.update(by_object.keys())
            for obj, phrase in by_object.items():
                phrases.setdefault(obj, Counter())[phrase] += 1
        shared = [phrases[obj].most_common(1)[0][0] for obj, n in named.items() if n >= min_share * len(texts)]
        agreed = [phrase for phrase in shared if support_of(image_id, phrase) >= min_support]
        if agreed:
            order = segment_positions(texts)
            captions[image_id] = join_segments(sorted(agreed, key=order.__getitem__))
    return captions


def replace_chosen(pairs: pl.DataFrame, captions: Sequence[str], score: Score, mode: RegionPairs) -> pl.DataFrame:
    """`pairs` with chosen caption k rewritten as `captions[k]` (rescored by CLIP where it changed);
    `unsupported_dropped` counts the objects each chosen caption lost. mode `cut`: the new caption replaces the chosen
    one; `add`: the pairs stay, and each new caption is chosen in one more pair against the caption it rewrote (pair
    id `<pair id>/region`, task `region`), so the pairs rank new > chosen > negative."""
    if mode not in ("cut", "add"):
        raise ValueError(f"unknown region pairs mode {mode!r}; use 'cut' or 'add'")
    old = pairs["chosen"].to_list()
    changed = [k for k, (a, b) in enumerate(zip(old, captions)) if a != b]
    dropped = [0] * len(old)
    for k in changed:
        kept = {segment_object(p) for p in segment_texts(captions[k])}
        dropped[k] = sum(segment_object(p) not in kept for p in segment_texts(old[k]))
    scores = pairs["score_chosen"].to_numpy().copy()
    if changed:
        scores[changed] = score([pairs["image_id"][k] for k in changed], [captions[k] for k in changed])
    edited = pairs.with_columns(
        chosen=pl.Series(list(captions), dtype=pl.String),
        score_chosen=pl.Series(scores, dtype=pl.Float64),
        unsupported_dropped=pl.Series(dropped, dtype=pl.Int32),
    )
    if mode == "cut":
        return edited
    extra = edited[changed].with_columns(
        rejected=pairs["chosen"].gather(changed),
        score_rejected=pairs["score_chosen"].gather(changed),
        rejected_source=pl.lit(REGION_CUT),
        pair_id=pl.format("{}/" + REGION_CUT, pl.col("pair_id")),
        task=pl.lit(REGION_CUT),
    )
    # The new pairs come first: the yes/no probes restate an image's first pair of the best rank, its new caption.
    return pl.concat([extra, pairs.with_columns(unsupported_dropped=pl.lit(0, pl.Int32))], how="diagonal_relaxed")


def region_support_edit(
    scorer: ClipScorer,
    images: Mapping[str, Image.Image],
    threshold: float,
    window: float,
    mode: RegionPairs,
    samples: pl.DataFrame | None = None,
    min_share: float = 0.5,
) -> Callable[[pl.DataFrame, Score], pl.DataFrame]:
    """The pair edit of `min_region_support`: the support of the pairs' own segments, then `drop_unsupported`; with
    `samples` (image_id, response: the sampled positives), the chosen captions become their image's grounded
    consensus instead (`grounded_consensus`), where it has one."""

    def edit(pairs: pl.DataFrame, score: Score) -> pl.DataFrame:
        texts: dict[str, list[str]] = {}
        for image_id, chosen, rejected in pairs.select("image_id", "chosen", "rejected").iter_rows():
            texts.setdefault(image_id, []).extend([chosen, rejected])
        if samples is None:
            return drop_unsupported(pairs, region_support_of(scorer, images, texts, window), threshold, score, mode)
        for image_id, response in samples.select("image_id", "response").iter_rows():
            texts.setdefault(image_id, []).append(response)
        support_of = region_support_of(scorer, images, texts, window)
        consensus = grounded_consensus(samples, support_of, threshold, min_share)
        captions = [consensus.get(i, c) for i, c in pairs.select("image_id", "chosen").iter_rows()]
        return replace_chosen(pairs, captions, score, mode)

    return edit
