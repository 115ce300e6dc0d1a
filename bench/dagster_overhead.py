"""(d) What Dagster costs on top of the work: one round through Dagster (a run, the event log, the IO manager
writing every output, metadata, checks) vs the same asset bodies called directly with their inputs in memory,
measured in this run on the default world with the same sampling seed and equally cold caches.

    .venv/bin/python bench/dagster_overhead.py [--repeats 2] [--source-store .si_store]

Both sides start from stores holding only the memoised bootstrap models of `--source-store` (run `make demo`
first), so sampling chunks, reference log-probs and evaluations are computed on both. `champion` is left out of
the direct side (it needs the run's own records; it takes milliseconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import dagster as dg  # noqa: E402

from resources import ArtifactStoreResource, ClipVerifier, ComputeDevice, VisionLanguageModels  # noqa: E402
from si_assets.assets.collection import ImagePoolConfig, SeedConfig, seed_checkpoint, unlabeled_images  # noqa: E402
from si_assets.assets.evaluation import EvalConfig, eval_scores  # noqa: E402
from si_assets.assets.optimization import TrainingConfig, trained_model  # noqa: E402
from si_assets.assets.organization import VerificationConfig, verified_pairs  # noqa: E402
from si_assets.assets.sampling import SamplingConfig, merge_shards  # noqa: E402
from si_assets.automation.runner import run_bootstrap, run_round  # noqa: E402
from si_assets.definitions import build_definitions, build_resources  # noqa: E402

ROUND = "round-0001"


def fresh_store(source: Path) -> Path:
    """A new store that knows the bootstrap models' memo (the pointers name files in the source store)."""
    root = Path(tempfile.mkdtemp(prefix="si_bench_overhead_")) / "store"
    memo = source / "_pointers" / "memo"
    if memo.is_dir():
        shutil.copytree(memo, root / "_pointers" / "memo", ignore=shutil.ignore_patterns("reference_logps-*", "eval-*"))
    return root


def through_dagster(source: Path, seed: int) -> float:
    root = fresh_store(source)
    defs = build_definitions(build_resources(str(root), device="cpu"))
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance)
    config = {"ops": {"collected_responses": {"config": {"seed": seed}}}}
    started = time.perf_counter()
    run_round(defs, instance, ROUND, config)
    return time.perf_counter() - started


def direct(source: Path, seed: int) -> float:
    """The same bodies, called as plain functions; inputs and outputs stay in memory."""
    root = fresh_store(source)
    defs = build_definitions(build_resources(str(root), device="cpu"))
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance)  # the world and bootstrap models, as the Dagster side has them
    store = ArtifactStoreResource(root=str(root))
    artifacts = store.get()
    world_improve, world_dev, world_test = (
        artifacts.load(artifacts.head(f"world_{s}")) for s in ("improve", "dev", "test")
    )
    bootstrap_seed, bootstrap_clip = (
        artifacts.load(artifacts.head(a)) for a in ("bootstrap_seed_model", "bootstrap_clip")
    )
    compute = ComputeDevice(device="cpu")
    models, clip = VisionLanguageModels(compute=compute), ClipVerifier(compute=compute)
    context = dg.build_asset_context(partition_key=ROUND, instance=instance)

    started = time.perf_counter()
    start = seed_checkpoint(context, SeedConfig(), models, store, bootstrap_seed).value
    images = first(unlabeled_images(context, ImagePoolConfig(), models, store, start, world_improve))
    sampling = SamplingConfig(seed=seed)  # one shard: the merge step decodes every chunk itself
    op_context = dg.build_op_context(partition_key=ROUND, instance=instance)  # merge_shards is an op of a graph
    sampled, negatives = (o.value for o in list(merge_shards(op_context, sampling, models, store, start, images, [])))
    pairs = first(
        verified_pairs(context, VerificationConfig(), clip, store, bootstrap_clip, sampled, negatives, images)
    )
    pipes = dg.PipesSubprocessClient()  # unused by the default in-process training
    model = trained_model(context, TrainingConfig(), models, store, start, pairs, images, pipes).value
    list(eval_scores(context, EvalConfig(), models, store, start, model, world_dev, world_test))
    return time.perf_counter() - started


def first(outputs):
    """The value of an asset's first output; the rest (check results) is drained so the asset finishes."""
    return list(outputs)[0].value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--source-store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    args = parser.parse_args()
    dagster_s, direct_s = [], []
    for k in range(args.repeats):  # alternate, so neither side always runs on a warmer machine
        seed = time.time_ns() % 2**31  # a round no cache has seen
        direct_s.append(direct(args.source_store, seed))
        dagster_s.append(through_dagster(args.source_store, seed))
        print(f"repeat {k + 1}: direct {direct_s[-1]:.1f} s, through Dagster {dagster_s[-1]:.1f} s")
    ratio = statistics.median(dagster_s) / statistics.median(direct_s)
    print(f"(d) one round through Dagster / the same bodies called directly = {ratio:.2f}x  (goal <= 1.15x)")


if __name__ == "__main__":
    main()
