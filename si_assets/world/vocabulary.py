"""What a captioned table tells about its world: kinds, colours, and which kinds go together."""

from __future__ import annotations

from collections import Counter

import polars as pl


def world_vocabulary(table: pl.DataFrame) -> tuple[list[str], list[str]]:
    """Object kinds and colours as the captioned data shows them (sorted: a stable order)."""
    kinds = sorted(set(table["objects"].explode().drop_nulls().to_list()))
    colours = sorted(set(table["colours"].explode().drop_nulls().to_list()))
    return kinds, colours


def cooccurring_pairs(table: pl.DataFrame, min_lift: float = 1.5) -> list[list[str]]:
    """Pairs of kinds that are each other's strongest companion, with lift (P(a,b) / P(a)P(b)) above
    `min_lift`."""
    counts: Counter = Counter()
    freq: Counter = Counter()
    for objects in table["objects"].to_list():
        freq.update(objects)
        counts.update((a, b) for a in objects for b in objects if a != b)
    n = max(1, table.height)
    best = {}
    for kind in freq:
        lift = {b: counts[(kind, b)] * n / (freq[kind] * freq[b]) for b in freq if b != kind}
        if lift:
            mate = max(sorted(lift), key=lift.get)
            if lift[mate] > min_lift:
                best[kind] = mate
    return sorted([a, b] for a, b in best.items() if best.get(b) == a and a < b)


def caption_mentions(caption: str, objects: list[str], colours: list[str]) -> list[tuple[str, str]]:
    """The (kind, colour) mentions of a labeled row in the order its caption names them."""
    return sorted(zip(objects, colours), key=lambda m: caption.find(f"{m[1]} {m[0]}"))


def caption_order_of(table: pl.DataFrame) -> str:
    """'kind' when every caption names its objects in the table's (kind) order, else 'paired'."""
    in_kind_order = all(
        [kind for kind, _ in caption_mentions(caption, objects, colours)] == objects
        for caption, objects, colours in table.select("caption", "objects", "colours").iter_rows()
    )
    return "kind" if in_kind_order else "paired"
