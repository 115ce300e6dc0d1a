"""(e) What a data-organization change costs: re-materializing `verified_pairs` with a new `margin` and what
automation then runs downstream, against a full round, both measured in this run on the default world.

The downstream selection is not hard-coded: it is what `dagster.evaluate_automation_conditions` requests
after the change. The full round uses a fresh sampling seed, so nothing of it comes from a cache except what
a real next round also reuses (the bootstrap models and the seed's own evaluation).

    .venv/bin/python bench/partial_update.py [--margin 0.02] [--source-store .si_store]

Runs in a temporary store and instance that start with the memoised bootstrap models of `--source-store`
(run `make demo` first, or the bootstrap trains here, minutes); the demo's champion is never touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import dagster as dg  # noqa: E402

from si_assets.automation.runner import run_bootstrap, run_round  # noqa: E402
from si_assets.definitions import build_definitions, build_resources  # noqa: E402

ROUND = "round-0001"


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    return {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(run_id) if s.end_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--source-store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="si_bench_partial_"))
    memo = args.source_store / "_pointers" / "memo"
    if memo.is_dir():  # the memo pointers name absolute paths in the source store: read there, write here
        shutil.copytree(memo, work / "store" / "_pointers" / "memo")
    defs = build_definitions(build_resources(str(work / "store"), device="cpu"))
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance)

    sampling_seed = time.time_ns() % 2**31  # a round no cache has seen
    config = {"ops": {"collected_responses": {"config": {"seed": sampling_seed}}}}
    started = time.perf_counter()
    full = run_round(defs, instance, ROUND, config)
    full_s = time.perf_counter() - started
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)

    started = time.perf_counter()
    pairs_job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("verified_pairs")])
    changed = pairs_job.execute_in_process(
        instance=instance,
        partition_key=ROUND,
        asset_selection=[dg.AssetKey("verified_pairs")],
        run_config={"ops": {"verified_pairs": {"config": {"margin": args.margin}}}},
    )
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    requested = [k for k in defs.resolve_all_asset_keys() if ROUND in tick.get_requested_partitions(k)]
    downstream = defs.resolve_implicit_job_def_def_for_assets(requested).execute_in_process(
        instance=instance, partition_key=ROUND, asset_selection=requested, raise_on_error=False
    )
    partial_s = time.perf_counter() - started

    print(f"sampling seed {sampling_seed}; gate: {'refused' if full.refused else 'passed'} in the full round")
    print("full round steps (s):", {k: round(v, 1) for k, v in step_seconds(instance, full.result.run_id).items()})
    print("automation requested:", sorted(k.to_user_string() for k in requested))
    partial_steps = {**step_seconds(instance, changed.run_id), **step_seconds(instance, downstream.run_id)}
    print("partial update steps (s):", {k: round(v, 1) for k, v in partial_steps.items()})
    print(f"full round {full_s:.1f} s; margin change + automated downstream {partial_s:.1f} s")
    print(f"(e) partial update / full round = {partial_s / full_s:.0%}  (goal <= 35%)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
