"""What every asset shares: content-hash data versions, tables for the UI, logging."""

import dagster as dg
import polars as pl

from si_assets.storage import Checkpoint, content_hash

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
