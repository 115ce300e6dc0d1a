"""Plots for the UI (Dagster-free): matplotlib figures as PNG bytes, embedded in markdown metadata."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # servers have no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

LOWER_IS_BETTER = frozenset({"chair_s", "chair_i"})


def figure_png(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """Dagster renders markdown metadata; an inline data URI keeps the plot with the materialization."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def arrow(metric: str) -> str:
    return "↓" if metric in LOWER_IS_BETTER else "↑"


def metric_bars_png(table: pl.DataFrame, metrics: Sequence[str], models: Sequence[str] = ("seed", "trained")) -> bytes:
    """Grouped bars, one group per metric, one bar per model (columns of a `metric` table); whiskers show a model's
    interval where the table has `<model>_low` / `<model>_high`."""
    rows = table.filter(pl.col("metric").is_in(list(metrics)))
    names = rows["metric"].to_list()
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.0))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        positions = [k + (i - (len(models) - 1) / 2) * width for k in range(len(names))]
        values = rows[model].to_list()
        whiskers = None
        if f"{model}_low" in rows.columns:
            low, high = rows[f"{model}_low"].to_list(), rows[f"{model}_high"].to_list()
            whiskers = [[v - lo for v, lo in zip(values, low)], [hi - v for v, hi in zip(values, high)]]
        bars = ax.bar(positions, values, width, label=model, yerr=whiskers, capsize=2)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
    ax.set_xticks(range(len(names)), [f"{n} {arrow(n)}" for n in names], rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return figure_png(fig)
