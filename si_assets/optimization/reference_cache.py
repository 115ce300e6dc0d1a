"""Reference log-probs cached per pair, not per pair set (Dagster-free).

The reference model is the round's seed, so a pair's reference log-probs depend only on the seed, the pair's
content (image, prompt, chosen, rejected) and the length settings. One cache table per (seed, settings) grows
as pair sets are organized differently: a new `margin` or `pairs_per_image` computes only the pairs it has
not seen, and a re-run computes none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from si_assets.optimization.dpo import REF_COLUMNS
from si_assets.storage.store import ArtifactStore, StoredArtifact

PAIR_KEY = "pair_key"
CACHE_ASSET = "_memo/reference_logps"
_SCHEMA = {PAIR_KEY: pl.String, **{c: pl.Float64 for c in REF_COLUMNS}}


@dataclass(frozen=True)
class ReferenceLookup:
    table: pl.DataFrame  # pair_id + reference columns, one row per given pair
    artifact: StoredArtifact  # the cache version that holds them
    computed: int  # pairs computed by this call
    reused: int  # pairs found in the cache


def pair_key(image_id: str, prompt: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256("\x1f".join((image_id, prompt, chosen, rejected)).encode()).hexdigest()[:24]


def with_pair_keys(pairs: pl.DataFrame) -> pl.DataFrame:
    keys = [pair_key(*row) for row in pairs.select("image_id", "prompt", "chosen", "rejected").iter_rows()]
    return pairs.with_columns(pl.Series(PAIR_KEY, keys, dtype=pl.String))


def cached_reference(
    store: ArtifactStore,
    cache_key: str,
    pairs: pl.DataFrame,
    compute: Callable[[pl.DataFrame], pl.DataFrame],
) -> ReferenceLookup:
    """Reference log-probs of `pairs` (needs pair_id, image_id, prompt, chosen, rejected); `compute` gets the
    pairs not yet in the cache named `cache_key` and returns pair_id + reference columns for them."""
    pointer_name = f"memo/reference_logps-{cache_key}"
    pointer = store.read_pointer(pointer_name)
    artifact = StoredArtifact(**pointer["artifact"]) if pointer else None
    cache = store.read_table(artifact) if artifact else pl.DataFrame(schema=_SCHEMA)
    keyed = with_pair_keys(pairs)
    missing = keyed.filter(~pl.col(PAIR_KEY).is_in(cache[PAIR_KEY].implode()))
    if missing.height:
        fresh = compute(missing.drop(PAIR_KEY))
        absent = set(missing["pair_id"]) - set(fresh["pair_id"])
        if absent:
            raise ValueError(f"reference computation returned no log-probs for {len(absent)} pairs")
        fresh = fresh.join(missing.select("pair_id", PAIR_KEY), on="pair_id").select(_SCHEMA.keys()).cast(_SCHEMA)
        cache = pl.concat([cache, fresh]).unique(PAIR_KEY, keep="first").sort(PAIR_KEY)
        artifact = store.put(cache, CACHE_ASSET, cache_key)
        store.write_pointer(pointer_name, {"artifact": artifact.__dict__})
    table = keyed.select("pair_id", PAIR_KEY).join(cache, on=PAIR_KEY, how="left").drop(PAIR_KEY)
    return ReferenceLookup(table, artifact, missing.height, pairs.height - missing.height)
