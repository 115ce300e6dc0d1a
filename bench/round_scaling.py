"""(g) Does a round's cost grow linearly with its image pool, and does its memory stay flat? One round through
Dagster on 1x, 2x and 4x an image pool (a folder of the world's `improve` images), each in a fresh process over a
fresh store holding only the memoised bootstrap models: wall time and peak resident memory of every step, and each
step's time per image against the 1x pool's.

    .venv/bin/python bench/round_scaling.py --store DIR/store [--pool 375] [--factors 1 2 4]

`--store` is a store the bootstrap ran in (`make demo`, or `bench/demo_footprint.py --keep DIR`). Evaluation scores
the fixed dev and test splits, so it does not grow with the pool; it is shown, and left out of the pool's total.
Resident memory is sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.*` when run as a script
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import polars as pl  # noqa: E402

FIXED_STEPS = ("eval_scores",)  # their work does not depend on the pool


class RssSampler(threading.Thread):
    """This process's resident memory over time, read from /proc (torch releases the GIL while it computes)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.time(), rss_bytes()))
            time.sleep(self.interval)

    def peak(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=rss_bytes())


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_pool(store_root: Path, folder: Path, count: int) -> None:
    """The first `count` images of the world's `improve` split, as PNG files."""
    from si_assets.storage import ArtifactStore

    store = ArtifactStore(str(store_root))
    improve = store.read_table(store.head("world_improve"))
    if improve.height < count:
        raise SystemExit(f"the world's improve split has {improve.height} images, fewer than {count}")
    folder.mkdir(parents=True)
    for image_id, png in zip(improve["id"].head(count), improve["image_png"].head(count)):
        (folder / f"{image_id}.png").write_bytes(png)


def one_round(source: Path, folder: Path) -> list[dict]:
    """Runs in the child: the bootstrap (memoised) and one round on `folder`; seconds and peak RSS per step."""
    import dagster as dg

    from bench.dagster_overhead import fresh_store
    from si_assets.automation.runner import run_bootstrap, run_round
    from si_assets.definitions import build_definitions, build_resources

    defs = build_definitions(build_resources(str(fresh_store(source)), device="cpu"))
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance)
    sampler = RssSampler()
    sampler.start()
    config = {"ops": {"unlabeled_images": {"config": {"source": "folder", "folder": str(folder)}}}}
    result = run_round(defs, instance, "round-0001", config).result
    sampler.stopped.set()
    starts: dict[str, float] = {}
    steps = []
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[entry.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            start = starts[entry.step_key]
            steps.append(
                {
                    "step": entry.step_key,
                    "seconds": entry.timestamp - start,
                    "peak_rss": sampler.peak(start, entry.timestamp),
                }
            )
    return steps


def table(runs: dict[int, list[dict]]) -> pl.DataFrame:
    """One line per step: seconds and peak RSS per pool size, and time per image relative to the smallest pool."""
    frame = pl.DataFrame([{"images": n, **step} for n, steps in runs.items() for step in steps])
    smallest = min(runs)
    per_image = pl.col("seconds") / pl.col("images")
    base_rate = frame.filter(pl.col("images") == smallest).select("step", base=per_image)
    return (
        frame.join(base_rate, on="step")
        .with_columns(vs_linear=per_image / pl.col("base"), peak_gb=pl.col("peak_rss") / 1024**3)
        .select("step", "images", "seconds", "vs_linear", "peak_gb")
        .sort("images", maintain_order=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    parser.add_argument("--pool", type=int, default=375, help="images of the 1x pool")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # a pool folder: run one round, print JSON
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_round(args.store, args.child)))
        return

    work = Path(tempfile.mkdtemp(prefix="si_bench_scaling_"))
    runs: dict[int, list[dict]] = {}
    for factor in args.factors:
        count = args.pool * factor
        folder = work / f"pool_{count}"
        write_pool(args.store, folder, count)
        started = time.perf_counter()
        child = [sys.executable, __file__, "--store", str(args.store), "--child", str(folder)]
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the round on {count} images failed:\n{done.stderr[-3000:]}")
        runs[count] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{count} images: {time.perf_counter() - started:.0f} s in all (process start and bootstrap included)")

    steps = table(runs)
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, float_precision=2):
        print(steps)
    pool_steps = steps.filter(~pl.col("step").is_in(FIXED_STEPS))
    totals = pool_steps.group_by("images", maintain_order=True).agg(pl.col("seconds").sum(), pl.col("peak_gb").max())
    smallest = totals["images"].min()
    base_rate = float(totals.filter(pl.col("images") == smallest)["seconds"][0]) / smallest
    for images, seconds, peak in totals.iter_rows():
        print(
            f"(g) {images} images: the pool's steps {seconds:.0f} s = {seconds / images / base_rate:.2f}x linear"
            f" from {smallest}; peak RSS {peak:.2f} GB"
        )


if __name__ == "__main__":
    main()
