"""Long steps in chunks (Dagster-free): each finished chunk is stored atomically as soon as it is done, so a
killed run started again computes only the chunks it had not finished, and the result has every row once.

A chunk is named by its position and the hash of its input rows, under a key of everything else its output
depends on (model version, settings, device): a chunk found under that name is the same work, done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from si_assets.progress import progress
from si_assets.storage.store import ArtifactStore, content_hash


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` owns every `count`-th chunk from `index`: shards split the same chunk list, so
    their outputs are the unsharded run's chunks, whichever process computes them."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist")

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index


WHOLE = Shard()  # every chunk


@dataclass(frozen=True)
class ChunkStats:
    chunks: int
    computed: int
    reused: int


def run_in_chunks(
    store: ArtifactStore,
    step: str,
    key: str,
    work: pl.DataFrame,
    rows_per_chunk: int,
    compute: Callable[[pl.DataFrame], pl.DataFrame],
    log: Callable[[str], None] | None = None,
    shard: Shard = WHOLE,
) -> tuple[pl.DataFrame, ChunkStats]:
    """`compute` over `work` in slices of `rows_per_chunk` rows, in order; outputs concatenated in that order.
    With a `shard`, only the chunks it owns."""
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
    if work.height == 0 or not any(shard.owns(i) for i in range(-(-work.height // rows_per_chunk))):
        return compute(work.clear()), ChunkStats(0, 0, 0)
    folder = f"_chunks/{step}/{key}"
    slices = [(i, chunk) for i, chunk in enumerate(work.iter_slices(rows_per_chunk)) if shard.owns(i)]
    parts, computed = [], 0
    with progress(len(slices), f"{step} chunks", log) as bar:
        for index, chunk in slices:
            name = f"{index:06d}-{content_hash(chunk)[:16]}"
            done = store.read_part(folder, name)
            if done is None:
                done = compute(chunk)
                store.write_part(folder, name, done)
                computed += 1
            parts.append(done)
            bar.update(1)
    stats = ChunkStats(len(slices), computed, len(slices) - computed)
    if log and stats.reused:
        log(f"{step}: {stats.reused} of {stats.chunks} chunks were already done (resumed)")
    return pl.concat(parts), stats
