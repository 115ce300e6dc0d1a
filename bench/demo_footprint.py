"""(f) `make demo` from an empty store: wall time and peak resident memory, against the goals (10 min, 4 GB on
2 cores). Runs the demo module in a child process over a temporary DAGSTER_HOME and store (the venv must exist).

    .venv/bin/python bench/demo_footprint.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS, GOAL_BYTES = 600, 4 * 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="si_bench_demo_"))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(work / "dagster_home"),
        "SI_STORE": str(work / "store"),
        "HF_HUB_OFFLINE": "1",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "si_assets.demo"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kilobytes on Linux
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"the demo failed (exit {done.returncode})")
    print(done.stdout[-1800:])
    print(
        f"(f) make demo from an empty store: {seconds / 60:.1f} min (goal <= {GOAL_SECONDS / 60:.0f}), "
        f"peak RSS {peak / 1024**3:.2f} GB (goal <= {GOAL_BYTES / 1024**3:.0f}); "
        f"time {seconds / GOAL_SECONDS:.0%} and memory {peak / GOAL_BYTES:.0%} of the goals"
    )


if __name__ == "__main__":
    main()
