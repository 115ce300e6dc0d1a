"""What every asset shares: content-hash data versions, tables for the UI, logging."""

import hashlib
import json
import shutil
from collections.abc import Callable

import dagster as dg
import polars as pl
from pydantic import BaseModel

from si_assets.storage import ArtifactStore, Checkpoint, StoredArtifact, content_hash

# Group names follow the survey's stages (DESIGN.md §3), plus the embedded world's own.
WORLD, BOOTSTRAP, COLLECTION, ORGANIZATION, OPTIMIZATION, EVALUATION = (
    "world",
    "bootstrap",
    "collection",
    "organization",
    "optimization",
    "evaluation",
)


def versioned(value: pl.DataFrame | Checkpoint, output_name: str = "result", **metadata) -> dg.Output:
    """The content hash is the data version: re-materializing identical content does not make
    downstream assets stale, and the IO manager stores it under the same hash."""
    return dg.Output(
        value, output_name=output_name, data_version=dg.DataVersion(content_hash(value)[:16]), metadata=metadata
    )


def preview(df: pl.DataFrame, rows: int = 8, drop: tuple[str, ...] = ("image_png",)) -> dg.MetadataValue:
    """A markdown preview of a table for the UI (binary columns left out)."""
    shown = df.drop([c for c in drop if c in df.columns]).head(rows)
    shown = shown.with_columns(
        [pl.col(c).cast(pl.List(pl.String)).list.join(", ") for c, t in shown.schema.items() if isinstance(t, pl.List)]
    )
    return dg.MetadataValue.md(markdown_table(shown))


def markdown_table(df: pl.DataFrame, float_format: str = "{:.3f}") -> str:
    def cell(v) -> str:
        return float_format.format(v) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows())


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
