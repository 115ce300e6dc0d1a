"""Does the headline hold on worlds a user configures? Bootstrap and one round of the loop on several embedded
world configurations other than the default: other seeds, colours, co-occurring partners and their strength,
object counts and noise.

Per world: the bootstrap seed's quality (precision, recall, POPE accuracy / F1 / yes-ratio on the test split) and
the round's gain with its paired bootstrap interval. Each world is bootstrapped through Dagster (memoised in the
store) and its round run through the product's round API, as `bench/round_ablation.py` runs its `loop` variant.

    .venv/bin/python bench/worlds.py --out docs/results/worlds     # writes worlds.csv and worlds.md
    .venv/bin/python bench/worlds.py --worlds partners_strong --seeds 0 1 2

A stopped run resumes: worlds and round seeds already in the CSV are not run again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.*` when run as a script

import dagster as dg  # noqa: E402
import polars as pl  # noqa: E402

from bench.round_ablation import VARIANTS, cpu_model, run  # noqa: E402
from si_assets.bootstrap.seed_model import SeedTrainingError  # noqa: E402

# Each world has its own seed, which keys its rows in the CSV.
WORLDS: dict[str, dict] = {
    "other_colours": {
        "seed": 11,
        "colours": {"purple": [140, 60, 190], "orange": [240, 140, 30], "cyan": [40, 190, 200], "white": [235] * 3},
    },
    "other_partners": {
        "seed": 12,
        "cooccurrence": [["square", "star"], ["circle", "hexagon"], ["ring", "diamond"]],
    },
    "partners_strong": {"seed": 13, "cooccurrence_strength": 0.95, "caption_noise": 0.7},
    "partners_weak": {"seed": 14, "cooccurrence_strength": 0.5, "caption_noise": 0.3},
    "crowded": {"seed": 15, "min_objects": 2, "max_objects": 5},
    "noisy_pixels": {"seed": 16, "pixel_noise": 10.0, "clutter": 2, "min_contrast": 0.6},
    "another_seed": {"seed": 17},
    "colours_and_partners": {
        "seed": 18,
        "colours": {"pink": [230, 110, 180], "teal": [20, 150, 150], "orange": [240, 140, 30], "black": [25] * 3},
        "cooccurrence": [["star", "hexagon"], ["circle", "diamond"], ["cross", "triangle"]],
        "cooccurrence_strength": 0.7,
    },
    "fewer_objects": {"seed": 19, "max_objects": 3},
    "small_objects": {"seed": 20, "min_object_size": 8, "max_object_size": 12},
    "six_kinds": {"seed": 21, "kinds": ["circle", "square", "triangle", "star", "cross", "ring"]},
}


FAILED = "bootstrap failed"  # the variant of a world's row whose bootstrap raised; its `settings` say why


def record_failure(csv: Path, world_seed: int, error: Exception) -> None:
    """A row that says why a world has no result (its error's first sentence), so the table can tell the reader."""
    rows = pl.read_csv(csv, infer_schema_length=None) if csv.exists() else pl.DataFrame()
    if rows.height:
        rows = rows.filter((pl.col("world") != world_seed) | (pl.col("variant") != FAILED))
    failed = pl.DataFrame({"world": [world_seed], "seed": [-1], "variant": [FAILED]})
    failed = failed.with_columns(settings=pl.lit(str(error).splitlines()[0].split(". ")[0]), cpu=pl.lit(cpu_model()))
    pl.concat([rows, failed], how="diagonal_relaxed").write_csv(csv)


def table(results: pl.DataFrame, split: str = "test") -> pl.DataFrame:
    """One line per world: the seed's quality and the round's gain (mean over round seeds; the paired interval of
    the gain when there is one round seed, else the range of the runs' gains)."""
    lines = []
    for name, world in WORLDS.items():
        rows = results.filter(pl.col("world") == world["seed"])
        seed, runs = rows.filter(pl.col("variant") == "seed"), rows.filter(pl.col("variant") == "loop")
        if seed.height == 0 or runs.height == 0:
            failed = rows.filter(pl.col("variant") == FAILED)["settings"] if FAILED in rows["variant"] else []
            missing = "the round" if seed.height else "the bootstrap"
            why = failed[0] if len(failed) else f"{missing} failed or has not run (its log)"
            lines.append({"world": name, "seed precision": f"no result: {why}"})
            continue

        def gain(metric: str, runs: pl.DataFrame = runs) -> str:
            mean = float(runs[f"{split}_gain_{metric}"].mean()) * 100
            low, high = runs[f"{split}_gain_{metric}_low"].min() * 100, runs[f"{split}_gain_{metric}_high"].max() * 100
            return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"

        lines.append(
            {
                "world": name,
                "seed precision": f"{seed[f'{split}_precision'][0]:.3f}",
                "seed recall": f"{seed[f'{split}_recall'][0]:.3f}",
                "seed POPE acc": f"{seed[f'{split}_pope_accuracy'][0]:.3f}",
                "seed yes-ratio": f"{seed[f'{split}_pope_yes_ratio'][0]:.2f}",
                "round seeds": runs.height,
                "precision gain": gain("precision"),
                "recall change": gain("recall"),
                "POPE F1 change": gain("pope_f1"),
                "trained POPE acc": f"{float(runs[f'{split}_pope_accuracy'].mean()):.3f}",
                # a world's bootstrap, and so its every number, depends on the CPU's floating-point kernels
                "measured on": seed["cpu"][0] if "cpu" in seed.columns and seed["cpu"][0] else "not recorded",
            }
        )
    return pl.DataFrame(lines).cast(pl.String).fill_null("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="round seeds (the whole round's)")
    parser.add_argument("--images", type=int, default=1500, help="unlabeled images used (the improve split's head)")
    parser.add_argument("--world", type=json.loads, default={}, help="overrides for every world, e.g. its splits")
    parser.add_argument("--seed-model", type=json.loads, default={}, help="bootstrap_seed_model config overrides")
    parser.add_argument("--clip", type=json.loads, default={}, help="bootstrap_clip config overrides")
    for stage in ("sample", "verify", "train"):
        parser.add_argument(f"--{stage}", type=json.loads, default={}, help=f"{stage} settings overrides as JSON")
    parser.add_argument("--report-only", action="store_true", help="write OUT.md from OUT.csv; run nothing")
    parser.add_argument("--out", type=Path, help="write OUT.csv (one row per run) and OUT.md (the table)")
    args = parser.parse_args()
    csv = args.out.with_suffix(".csv") if args.out else None
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    measured = []
    if not args.report_only:
        for name in args.worlds:
            world = {**WORLDS[name], **args.world}
            seed = world.pop("seed")
            loop = [VARIANTS["loop"]]
            overrides = {"sampling": args.sample, "verification": args.verify, "training": args.train}
            try:
                measured.append(
                    run(loop, args.seeds, [seed], args.images, overrides, world, args.clip, args.seed_model, out=csv)
                )
            except (dg.DagsterError, SeedTrainingError) as error:
                # e.g. a seed that never learns yes/no (`materialize` raises the asset's own error): the rest run
                print(f"world {name} failed: {error}")
                if csv:
                    record_failure(csv, seed, error)
    results = pl.read_csv(csv) if csv else pl.concat(measured, how="diagonal")
    shown = table(results)
    with pl.Config(tbl_rows=20, tbl_cols=20, tbl_width_chars=250):
        print(shown)
    if args.out:
        given = [a for a in sys.argv[1:] if a != "--report-only"]
        head = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
        body = "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in shown.iter_rows())
        configs = "\n".join(f"- `{name}`: `{json.dumps(world)}`" for name, world in WORLDS.items())
        args.out.with_suffix(".md").write_text(
            f"<!-- written by: .venv/bin/python bench/worlds.py {shlex.join(given)} -->\n"
            "The test split of each world; the seed's quality, and the gain of one round of the loop over it "
            "[paired bootstrap 95% interval over the test images; with several round seeds, from the lowest low "
            "to the highest high].\n\n"
            + head
            + body
            + "\n\nWorlds (changes from the default world):\n"
            + configs
            + "\n"
        )
        print(f"wrote {csv} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
