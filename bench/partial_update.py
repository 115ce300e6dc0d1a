"""(e) What a data-organization change costs: re-materializing `verified_pairs` with a new `margin` and what
automation then runs downstream, against a full round, both measured in this run on the default world.

The downstream selection is not hard-coded: it is what `dagster.evaluate_automation_conditions` requests
after the change. The full round uses a fresh sampling seed, so nothing of it comes from a cache except what
a real next round also reuses (the bootstrap models and the seed's own evaluation). The update runs twice: with
`warm_start_max_change: 0.25` (`trained_model` continues the round's previous adapter), then with 0, training from
the seed; the model before the change and both updates are compared on the test split, with paired bootstrap
intervals against the one trained from the seed: what the warm start saves, and whether it keeps the result.

    .venv/bin/python bench/partial_update.py [--margin 0.02] [--warm-lr-scale 0.1] [--source-store .si_store]

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
from si_assets.evaluation.data import EvalSettings  # noqa: E402
from si_assets.evaluation.uncertainty import counts_of, paired_delta_intervals  # noqa: E402
from si_assets.optimization.dpo import TrainingSettings  # noqa: E402
from si_assets.rounds.steps import score_checkpoint  # noqa: E402
from si_assets.storage import StoredArtifact  # noqa: E402

ROUND = "round-0001"


COMPARED = ("precision", "recall", "pope_f1")
FROM_SEED = {"config": {"warm_start_max_change": 0.0}}


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    return {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(run_id) if s.end_time}


def latest(instance: dg.DagsterInstance, asset: str) -> dict:
    """The metadata of the asset's latest materialization in the round."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[ROUND]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def run_downstream(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list, config: dict) -> float:
    """Run `keys` of the round as one run; its seconds."""
    started = time.perf_counter()
    defs.resolve_implicit_job_def_def_for_assets(keys).execute_in_process(
        instance=instance, partition_key=ROUND, asset_selection=keys, run_config=config, raise_on_error=False
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--warm-lr-scale", type=float, default=TrainingSettings().warm_start_lr_scale)
    parser.add_argument("--source-store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="si_bench_partial_"))
    memo = args.source_store / "_pointers" / "memo"
    if memo.is_dir():  # the memo pointers name absolute paths in the source store: read there, write here
        shutil.copytree(memo, work / "store" / "_pointers" / "memo")
    resources = build_resources(str(work / "store"), device="cpu")
    defs = build_definitions(resources)
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance)

    sampling_seed = time.time_ns() % 2**31  # a round no cache has seen
    config = {"ops": {"collected_responses": {"config": {"seed": sampling_seed}}}}
    started = time.perf_counter()
    full = run_round(defs, instance, ROUND, config)
    full_s = time.perf_counter() - started
    before = latest(instance, "trained_model")
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)

    warm_config = {"config": {"warm_start_max_change": 0.25, "warm_start_lr_scale": args.warm_lr_scale}}
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
    change_s = time.perf_counter() - started  # the new pairs and automation's answer: shared by both updates
    warm_s = change_s + run_downstream(defs, instance, requested, {"ops": {"trained_model": warm_config}})
    warm_run = instance.get_runs(limit=1)[0].run_id
    warm = latest(instance, "trained_model")
    cold_s = change_s + run_downstream(defs, instance, requested, {"ops": {"trained_model": FROM_SEED}})
    cold = latest(instance, "trained_model")

    print(f"sampling seed {sampling_seed}; gate: {'refused' if full.refused else 'passed'} in the full round")
    print("full round steps (s):", {k: round(v, 1) for k, v in step_seconds(instance, full.result.run_id).items()})
    print("automation requested:", sorted(k.to_user_string() for k in requested))
    partial_steps = {**step_seconds(instance, changed.run_id), **step_seconds(instance, warm_run)}
    print("partial update steps (s):", {k: round(v, 1) for k, v in partial_steps.items()})
    print(f"warm start: {warm['warm_start']}; pairs {warm['warm_start_pairs']}")
    print(f"full round {full_s:.1f} s; margin change + automated downstream {warm_s:.1f} s")
    print(f"(e) partial update / full round = {warm_s / full_s:.0%}  (goal <= 35%)")
    print(f"    the same update training from the seed: {cold_s:.1f} s = {cold_s / full_s:.0%} of a full round")
    compare(resources, {"before the change": before, "warm start": warm, "from the seed": cold})
    shutil.rmtree(work, ignore_errors=True)


def compare(resources: dict, trained: dict[str, dict]) -> None:
    """The models on the test split (their evaluations come from the store), and each one − the last (the update
    trained from the seed) with paired bootstrap intervals over the test images."""
    store, settings = resources["store"].get(), EvalSettings()
    data = settings.data("test", store.read_table(store.head("world_test")))
    scored = {}
    for name, meta in trained.items():
        checkpoint = store.local_checkpoint(StoredArtifact("checkpoint", meta["path"], meta["content_hash"]))
        scored[name] = score_checkpoint(settings, resources["models"], store, checkpoint, data, lambda _: None)
        print(
            f"{name:>14}: {meta['steps']:>4} steps, {meta['train_seconds']:6.1f} s training; test "
            + ", ".join(f"{m} {scored[name].metrics[m]:.3f}" for m in COMPARED)
        )
    *others, (cold_name, cold) = scored.items()
    for name, other in others:
        delta = paired_delta_intervals(counts_of(cold.captions), counts_of(other.captions))
        print(
            f"{name} − {cold_name} (test, 95% paired bootstrap): "
            + ", ".join(
                f"{m} {100 * (other.metrics[m] - cold.metrics[m]):+.1f} "
                f"[{100 * delta[m][0]:+.1f}, {100 * delta[m][1]:+.1f}]"
                for m in COMPARED
            )
        )


if __name__ == "__main__":
    main()
