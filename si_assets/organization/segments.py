"""Segments of a response: the spans that name one thing each ("a red circle" in "a red circle, a blue square and
a star."), split at list separators and sentence ends. Pairs are edited and captions composed segment by segment."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# Where one mention ends and the next begins: list separators and sentence ends.
SEGMENT_BREAK = re.compile(r",\s*|\s+and\s+|(?<=[.!?])\s+")


def segment_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each mention-sized segment: "a red circle, a blue square and a star." has three; the
    final full stop belongs to no segment, so a swap keeps the sentence's punctuation."""
    spans, start = [], 0
    for separator in SEGMENT_BREAK.finditer(text):
        spans.append((start, separator.start()))
        start = separator.end()
    spans.append((start, len(text)))
    stripped = [(a, b - 1) if text[a:b].endswith((".", "!", "?")) else (a, b) for a, b in spans]
    return [(a, b) for a, b in stripped if text[a:b].strip()]


def segment_texts(text: str) -> list[str]:
    """The segments of `text`, stripped: "a red circle, a blue square." -> ["a red circle", "a blue square"]."""
    return [text[a:b].strip() for a, b in segment_spans(text)]


def swapped_responses(chosen: str, donor: str) -> list[str]:
    """Every text that is `chosen` with one of its segments replaced by a segment of `donor` that `chosen`
    does not contain: as long as `chosen`, different in one mention."""
    own = {chosen[a:b].strip().lower() for a, b in segment_spans(chosen)}
    inserts = dict.fromkeys(segment_texts(donor))
    inserts = [s for s in inserts if s.lower() not in own]
    return list(dict.fromkeys(chosen[:a] + s + chosen[b:] for a, b in segment_spans(chosen) for s in inserts))


def join_segments(segments: Sequence[str]) -> str:
    """The list form that segments are split from: a, b and c."""
    if not segments:
        return ""
    head = ", ".join(segments[:-1])
    return (f"{head} and {segments[-1]}" if head else segments[-1]) + "."


def _positions(texts: Sequence[str]) -> dict[str, list[int]]:
    """Each distinct segment -> its position in every text that names it (once per text)."""
    positions: dict[str, list[int]] = defaultdict(list)
    for text in texts:
        for k, segment in enumerate(dict.fromkeys(segment_texts(text))):
            positions[segment].append(k)
    return positions


def segment_positions(texts: Sequence[str]) -> dict[str, float]:
    """Every distinct segment of the texts with its mean position among the segments of the texts naming it."""
    return {segment: float(np.mean(ks)) for segment, ks in _positions(texts).items()}


def segment_votes(texts: Sequence[str]) -> dict[str, int]:
    """Every distinct segment of the texts with the number of texts that name it."""
    return {segment: len(ks) for segment, ks in _positions(texts).items()}
