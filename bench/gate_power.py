"""How often the promotion gate promotes a round like the ones in a store: per round, the dev precision gain and its
paired interval (as `eval_scores` stored them), the standard error the interval implies, the chance that rule
'interval' promotes a round whose true gain is the one measured, the true gain it promotes 80% of the time, and the
dev images it needs to promote the measured gain 80% of the time (normal approximation of the bootstrap interval,
`si_assets.rounds.gate.promotion_power`; precision only, the recall and POPE tests aside).

Reads the stores' evaluations only (nothing is generated again); one or more stores, e.g. one per chain:

    .venv/bin/python bench/gate_power.py STORE [STORE ...] [--dev-images 1000] [--min-gain 0.01]
"""

from __future__ import annotations

import argparse
from itertools import count
from pathlib import Path

import polars as pl

from si_assets.rounds import round_key
from si_assets.rounds.gate import dev_images_for, gain_promoted, interval_standard_error, promotion_power
from si_assets.storage import ArtifactStore

LEVEL = 0.95


def round_rows(store: ArtifactStore, dev_images: int, min_gain: float) -> list[dict]:
    """One row per evaluated round of `store`, in round order."""
    rows = []
    for key in map(round_key, count(1)):
        stored = store.head("eval_scores", key)
        if stored is None:
            break
        scores = store.read_table(stored)
        dev = scores.filter((pl.col("split") == "dev") & (pl.col("metric") == "precision")).row(0, named=True)
        error = interval_standard_error(dev["delta_low"], dev["delta_high"], LEVEL)
        needed = dev_images_for(dev["delta"], error, dev_images, min_gain, 0.8, LEVEL)
        rows.append(
            {
                "round": key,
                "dev gain": 100 * dev["delta"],
                "low": 100 * dev["delta_low"],
                "high": 100 * dev["delta_high"],
                "SE": 100 * error,
                "P(promoted)": promotion_power(dev["delta"], error, min_gain, LEVEL),
                "gain promoted 80%": 100 * gain_promoted(0.8, error, min_gain, LEVEL),
                "dev images for 80%": needed,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", type=Path, help="artifact stores (SI_STORE) with evaluated rounds")
    parser.add_argument("--dev-images", type=int, default=1000, help="the dev split's images in those evaluations")
    parser.add_argument("--min-gain", type=float, default=0.01, help="the gate's min_precision_gain")
    args = parser.parse_args()
    rows = [
        {"store": str(path)} | row
        for path in args.stores
        for row in round_rows(ArtifactStore(path), args.dev_images, args.min_gain)
    ]
    if not rows:
        raise SystemExit("no evaluated round in the stores given")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=2, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        print("dev precision gain per round, in points; the gate's rule 'interval' at the 95% level:")
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
