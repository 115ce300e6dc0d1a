"""The per-round summary: one row per round (pairs, rates, seed vs trained metrics, gate, promotion) and a
plot of the metrics across rounds, as PNG bytes for markdown metadata."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from si_assets.plots import arrow, figure_png, plt
from si_assets.rounds.naming import round_number
from si_assets.rounds.steps import HEADLINE

PLOTTED = ("precision", "recall", "chair_s", "pope_f1")


def headline_table(table: pl.DataFrame, splits: Sequence[str] = ("test", "dev")) -> pl.DataFrame:
    """An evaluation table for reading: per split and headline metric, each model's value with its 95% bootstrap
    interval, and the gain with its paired interval."""
    rows = table.filter(pl.col("metric").is_in(HEADLINE) & pl.col("split").is_in(list(splits)))
    rows = rows.sort(pl.col("split").replace_strict({s: i for i, s in enumerate(splits)}), maintain_order=True)

    def shown(column: str) -> pl.Expr:
        value = pl.col(column).map_elements(lambda v: f"{v:+.3f}" if column == "delta" else f"{v:.3f}", pl.String)
        if f"{column}_low" not in rows.columns:
            return value.alias(column)
        low, high = (pl.col(f"{column}_{end}").map_elements(lambda v: f"{v:.3f}", pl.String) for end in ("low", "high"))
        bounds = pl.format("[{}, {}]", low, high)
        return (
            pl.when(pl.col(f"{column}_low").is_null())
            .then(value)
            .otherwise(pl.format("{} {}", value, bounds))
            .alias(column)
        )

    columns = [c for c in ("base", "seed", "trained", "delta") if c in rows.columns]
    return rows.select("split", "metric", *[shown(c) for c in columns])


def rounds_table(rows: Sequence[dict]) -> pl.DataFrame:
    """Rows are dicts with at least `round`; missing values stay null (a round still running, a refused gate)."""
    if not rows:
        return pl.DataFrame({"round": [], "number": []}, schema={"round": pl.String, "number": pl.Int64})
    table = pl.DataFrame(list(rows), infer_schema_length=None)
    return table.with_columns(number=pl.col("round").map_elements(round_number, return_dtype=pl.Int64)).sort("number")


def plot_rounds(table: pl.DataFrame, metrics: Sequence[str] = PLOTTED) -> bytes:
    """Seed (the model each round started from) vs trained per round; filled markers = promoted. The dashed
    line is the base model every chain of rounds is held against."""
    if "trained_precision" in table.columns:
        table = table.filter(pl.col("trained_precision").is_not_null())  # rounds not yet evaluated
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        seed_col, trained_col = f"seed_{metric}", f"trained_{metric}"
        if seed_col not in table.columns or trained_col not in table.columns or table.height == 0:
            ax.set_axis_off()
            continue
        x = table["number"].to_list()
        seed, trained = table[seed_col].to_list(), table[trained_col].to_list()
        promoted = table["promoted"].fill_null(False).to_list() if "promoted" in table.columns else [False] * len(x)
        ax.plot(x, seed, "s--", color="0.55", label="seed", markersize=4)
        ax.plot(x, trained, "-", color="tab:blue", label="trained")
        if f"{trained_col}_low" in table.columns:  # the 95% interval over the evaluation images
            low, high = table[f"{trained_col}_low"].to_list(), table[f"{trained_col}_high"].to_list()
            known = [(i, v, lo, hi) for i, v, lo, hi in zip(x, trained, low, high) if lo is not None]
            if known:
                at, mid, lo, hi = zip(*known)
                err = [[m - a for m, a in zip(mid, lo)], [b - m for m, b in zip(mid, hi)]]
                ax.errorbar(at, mid, yerr=err, fmt="none", ecolor="tab:blue", capsize=2, linewidth=1)
        ax.scatter(
            x,
            trained,
            c=["tab:blue" if p else "white" for p in promoted],
            edgecolors="tab:blue",
            zorder=3,
            label="trained (filled: promoted)",
        )
        if seed[0] is not None:
            ax.axhline(seed[0], color="0.3", linestyle=":", linewidth=1)
        ax.set_title(f"{metric} {arrow(metric)}")
        ax.set_xlabel("round")
        ax.set_xticks(x)
    axes[0][0].legend(fontsize=7, loc="best")
    return figure_png(fig)
