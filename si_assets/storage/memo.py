"""Memoising expensive builds (bootstrap training) in the artifact store, keyed by what determines them."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable

import polars as pl
from pydantic import BaseModel

from si_assets.storage.store import ArtifactStore, Checkpoint, StoredArtifact


def config_key(*parts: BaseModel | str) -> str:
    """A stable key for memoising an expensive result by everything that determines it."""
    blob = json.dumps([p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def memoised_checkpoint(
    store: ArtifactStore, name: str, key: str, build: Callable[[], tuple[Checkpoint, dict]]
) -> tuple[Checkpoint, dict, bool]:
    """Reuse a checkpoint built earlier from the same key (same config, same code version) instead of
    training again. Returns (a staging copy of the checkpoint, its metadata, whether it was reused)."""
    pointer_name = f"memo/{name}-{key}"
    pointer = store.read_pointer(pointer_name)
    if pointer is not None:
        cached = store.local_checkpoint(StoredArtifact(**pointer["artifact"]))
        staging = store.staging_dir()
        shutil.copytree(cached.path, staging, dirs_exist_ok=True)
        return Checkpoint(staging), pointer["metadata"], True
    checkpoint, metadata = build()
    keep = store.staging_dir()
    shutil.copytree(checkpoint.path, keep, dirs_exist_ok=True)
    artifact = store.put(Checkpoint(keep), f"_memo/{name}", key)
    store.write_pointer(pointer_name, {"artifact": artifact.__dict__, "metadata": metadata})
    return checkpoint, metadata, False


def memoised_result(
    store: ArtifactStore, name: str, key: str, build: Callable[[], tuple[pl.DataFrame, dict]]
) -> tuple[pl.DataFrame, dict, StoredArtifact, bool]:
    """A table plus a small JSON-able dict (e.g. an evaluation's captions and metrics), computed once per key and
    kept as its own artifact. Returns (table, metadata, where it is stored, whether it was reused)."""
    pointer_name = f"memo/{name}-{key}"
    pointer = store.read_pointer(pointer_name)
    if pointer is not None:
        artifact = StoredArtifact(**pointer["artifact"])
        return store.read_table(artifact), pointer.get("metadata", {}), artifact, True
    table, metadata = build()
    artifact = store.put(table, f"_memo/{name}", key)
    store.write_pointer(pointer_name, {"artifact": artifact.__dict__, "metadata": metadata})
    return table, metadata, artifact, False
