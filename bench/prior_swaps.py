"""Prior-swapped negatives (a benchmark variant): the chosen caption with one mention replaced by what the
language prior says there.

The hallucination ratio mixes the image-free stream into every token; in the embedded world that adds wrong kinds
at random rather than the prior's partners, because the image-free stream picks its own anchors (docs/results.md,
"What the negatives hold"). Here the prior is asked at the chosen caption's own places instead: after the grounded
prefix "a red circle,", the image-free stream's next mention is the companion it expects after a circle.
Swapped in for the mention the caption has at that place, it makes a negative as long as the chosen caption that
differs in the one mention the prior would put there; CLIP picks the swap it scores lowest. Judge-free: the words
are the model's own, the pick is the verifier's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

from si_assets.organization.probes import mentioned_objects
from si_assets.organization.segments import SEGMENT_BREAK, segment_spans
from si_assets.organization.verification import PairEdit, Score, edited_negatives

# (prompts, prefixes) -> the image-free stream's continuation of each
Continue = Callable[[Sequence[str], Sequence[str]], list[str]]


def continuation_points(text: str) -> list[tuple[str, tuple[int, int]]]:
    """Per segment after the first: the text before it (separator kept, trailing space dropped) and its span. A
    model asked to continue the prefix says what it would name at that place."""
    spans = segment_spans(text)
    return [(text[:a].rstrip(), (a, b)) for a, b in spans[1:]]


def prior_swapped_responses(text: str, continuations: Sequence[str]) -> list[str]:
    """`text` with the segment at each continuation point replaced by the first segment of that point's
    continuation, unless it names an object `text` already names."""
    taken = set(mentioned_objects(text))
    edits = []
    for (_, (a, b)), continuation in zip(continuation_points(text), continuations, strict=True):
        said = continuation.strip()
        cut = SEGMENT_BREAK.search(said + " ")  # a trailing "," or "and" ends the mention too
        if cut is None:  # the continuation stopped mid-mention
            continue
        segment = said[: cut.start()].rstrip(".!?").strip()
        named = mentioned_objects(segment)
        if named and named[0] not in taken:
            edits.append(text[:a] + segment + text[b:])
    return list(dict.fromkeys(edits))


def prior_swap_edits(texts: Sequence[str], prompts: Sequence[str], continue_: Continue) -> list[list[str]]:
    """Per text, every prior swap; the prior is asked once per distinct (prompt, prefix)."""
    points = [[(prompt, prefix) for prefix, _ in continuation_points(text)] for text, prompt in zip(texts, prompts)]
    unique = list(dict.fromkeys(p for row in points for p in row))
    said = dict(zip(unique, continue_([p for p, _ in unique], [x for _, x in unique]))) if unique else {}
    return [prior_swapped_responses(text, [said[p] for p in row]) for text, row in zip(texts, points)]


def prior_swap_edit(continue_: Continue) -> PairEdit:
    """The pair edit that makes each caption pair's rejected response its lowest-scored prior swap (a pair keeps
    its negative where CLIP sees no swap as worse than the chosen caption)."""

    def edit(pairs: pl.DataFrame, score: Score) -> pl.DataFrame:
        edits = prior_swap_edits(pairs["chosen"].to_list(), pairs["prompt"].to_list(), continue_)
        return edited_negatives(pairs, edits, score, "prior_swapped")

    return edit
