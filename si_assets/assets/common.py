"""What every asset shares: content-hash data versions, tables for the UI, logging."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl

from si_assets.modeling.preflight import PreflightError
from si_assets.modeling.sources import ModelSourceError
from si_assets.rounds.steps import RoundError, table_version
from si_assets.storage import ArtifactStore, Checkpoint, content_hash
from si_assets.storage.lakefs_store import LakeFSArtifactStore

# Group names follow the survey's stages (DESIGN.md §3), plus the embedded world's own.
WORLD, BOOTSTRAP, COLLECTION, ORGANIZATION, OPTIMIZATION, EVALUATION = (
    "world",
    "bootstrap",
    "collection",
    "organization",
    "optimization",
    "evaluation",
)

PROMOTION_GATE = "promotion_gate"

# Steps that hold a model on the accelerator take a slot of the `gpu` concurrency pool, so two of them never share
# one GPU (the pool's limit is the GPU count: `dagster instance concurrency set gpu N`); with dagster-celery they
# go to the workers of the `gpu` queue. Elsewhere the tag is inert.
GPU_POOL = "gpu"
GPU_STEP_TAGS = {"dagster-celery/queue": "gpu"}
# Small values passed between the ops inside a graph-backed asset (shard numbers, shard summaries).
STEP_IO_MANAGER = "step_io_manager"

# Rounds are dynamic partitions (`round-0001`, ...): a schedule or a sensor adds the next one.
ROUNDS = dg.DynamicPartitionsDefinition(name="rounds")

# Downstream of sampling, an update re-materializes what depends on it, in the same round only. Updates of
# the world and the bootstrap models are ignored: a round is a snapshot, and re-running the world must not
# re-train every past round. Sampling itself is never automatic (it is the expensive step) and neither is
# `seed_checkpoint` (it would re-resolve the champion).
ROUND_AUTOMATION = dg.AutomationCondition.eager().ignore(dg.AssetSelection.groups(WORLD, BOOTSTRAP))


@contextmanager
def preflight(asset: str) -> Iterator[None]:
    """A failed pre-flight check, model source or refused input fails the step with what to change."""
    try:
        yield
    except (PreflightError, ModelSourceError, RoundError) as exc:
        check = getattr(exc, "check", "model_source")
        raise dg.Failure(f"{asset}: {exc}", metadata={"preflight_check": check}) from exc


@contextmanager
def staged(store: ArtifactStore | LakeFSArtifactStore) -> Iterator[Path]:
    """A fresh staging folder to build a checkpoint in; removed again if the build fails or is killed, so nothing
    half-written stays behind."""
    path = store.staging_dir()
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def data_version(value: pl.DataFrame | Checkpoint) -> str:
    """The version of an input as loaded from the store (a stored checkpoint's folder is named by its hash)."""
    return value.version if isinstance(value, Checkpoint) else table_version(value)


def consumed(**inputs: pl.DataFrame | Checkpoint) -> dict[str, dg.MetadataValue]:
    """`input/<name>` metadata: the data version of every input, so lineage is readable on the asset page."""
    return {f"input/{name}": dg.MetadataValue.text(data_version(v)) for name, v in inputs.items()}


def latest_metadata(context: dg.AssetExecutionContext, asset: str, partition: str | None = None) -> dict:
    """Plain values of the latest materialization's metadata of `asset` (in `partition`); {} if none."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


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
        [
            pl.Series(c, [_list_text(v) for v in shown[c].to_list()], pl.String)
            for c, t in shown.schema.items()
            if isinstance(t, pl.List)
        ]
    )
    return dg.MetadataValue.md(markdown_table(shown))


def _list_text(value: object) -> str:
    """`a, b` for a list; nested lists bracketed (`[1.5, 2], [3, 4]`)."""
    if not isinstance(value, list):
        return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
    return ", ".join(f"[{_list_text(v)}]" if isinstance(v, list) else _list_text(v) for v in value)


def markdown_table(df: pl.DataFrame, float_format: str = "{:.3f}") -> str:
    def cell(v) -> str:
        return float_format.format(v) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows())
