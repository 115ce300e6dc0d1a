"""Scale-out on existing engines, run for real here: DPO data-parallel in 2 torchrun processes on the gloo backend
launched through Dagster Pipes; sampling split into shards that the multiprocess executor (forkserver) runs side
by side under the `gpu` pool's limit, merging into exactly the unsharded tables; the cluster executors' configs."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from transformers import AutoModelForImageTextToText

from si_assets.automation.executors import all_ops, executor_from_env, gpu_ops, kubernetes_config
from si_assets.automation.runner import run_bootstrap, run_round, stored_table
from si_assets.definitions import all_assets, build_definitions, build_resources
from tests.test_graph import BOOTSTRAP_CONFIG, PASS_GATE, latest, round_config
from tests.tiny_architectures import assert_merged_lora

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
GPU_STEPS = ["bootstrap_clip", "bootstrap_seed_model", "eval_scores", "sample_shard", "trained_model", "verified_pairs"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A persistent instance (DAGSTER_HOME, sqlite: concurrency pools work) and store, bootstrapped."""
    home, store = tmp_path_factory.mktemp("dagster_home"), tmp_path_factory.mktemp("store")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_bootstrap(build_definitions(build_resources(str(store), device="cpu")), instance, BOOTSTRAP_CONFIG)
    return home, store


def test_dpo_runs_data_parallel_in_two_gloo_processes_through_pipes(home: tuple[Path, Path]) -> None:
    dagster_home, store = home
    defs = build_definitions(build_resources(str(store), device="cpu"))
    config = round_config(PASS_GATE, launcher="torchrun", processes=2)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run = run_round(defs, instance, "round-0001", config)
        assert run.result.success
        trained = latest(instance, "trained_model", "round-0001")
        seed = latest(instance, "seed_checkpoint", "round-0001")
        logs = [e.message for e in instance.all_logs(run.result.run_id) if e.message]
    assert trained["launcher"] == "torchrun" and trained["world_size"] == 2 and trained["backend"] == "gloo"
    # Each process takes half the pairs at half the batch (8 -> 4): the global batch, and so the steps, stay.
    assert trained["steps"] == math.ceil(math.ceil(trained["training_pairs"] / 2) / 4)
    assert any("DPO on 2 processes (gloo)" in m for m in logs)  # rank 0's log reached the run log over Pipes
    model = AutoModelForImageTextToText.from_pretrained(trained["path"], use_safetensors=True)
    before = AutoModelForImageTextToText.from_pretrained(seed["path"], use_safetensors=True)
    assert_merged_lora(model, before)
    assert (Path(trained["path"]) / "adapter" / "adapter_config.json").is_file()


def materialize_sampling(
    dagster_home: Path, store: Path, key: str, shards: int, pool_limit: int, upstream: bool = False
) -> None:
    """`dagster asset materialize` of a round's sampling with the multiprocess executor, in a fresh process
    (the executor needs a code location it can re-import), the `gpu` pool limited to `pool_limit`."""
    subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "instance", "concurrency", "set", "gpu", str(pool_limit)],
        env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
        check=True,
        capture_output=True,
    )
    config = {
        "ops": {
            "collected_responses": {
                "config": {"n_samples": 3, "n_negatives": 1, "max_new_tokens": 12, "chunk_size": 20, "shards": shards}
            }
        }
    }
    config_file = dagster_home / f"sampling-{key}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "SI_STORE": str(store), "SI_EXECUTOR": "multiprocess"}
    selection = ["sampled_responses", "hallucinated_negatives"]
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "si_assets.definitions",
            "--select",
            ",".join((["unlabeled_images", "seed_checkpoint"] if upstream else []) + selection),
            "--partition",
            key,
            "-c",
            str(config_file),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def shard_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float, int]]:
    """(start, end, pid) of every sample_shard step of a run."""
    starts, ends = {}, {}
    for event in instance.all_logs(run_id):
        step = event.step_key or ""
        if "sample_shard" not in step or event.dagster_event is None:
            continue
        if event.dagster_event.event_type_value == "STEP_START":
            starts[step] = (event.timestamp, event.dagster_event.pid)
        elif event.dagster_event.event_type_value == "STEP_SUCCESS":
            ends[step] = event.timestamp
    return {step: (start, ends[step], pid) for step, (start, pid) in starts.items()}


def test_sharded_sampling_in_parallel_processes_merges_to_the_unsharded_table(home: tuple[Path, Path]) -> None:
    """The same round sampled three times from scratch (its finished chunks removed in between): in one step,
    in two shards under a `gpu` pool of 2, in two shards under a pool of 1."""
    dagster_home, store = home
    key, runs = "round-0101", [("unsharded", 1, 1), ("two_shards_pool_2", 2, 2), ("two_shards_pool_1", 2, 1)]
    defs = build_definitions(build_resources(str(store), device="cpu"))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("rounds", [key])
    tables, windows = {}, {}
    for name, shards, pool_limit in runs:
        shutil.rmtree(store / "_chunks" / "collected_responses", ignore_errors=True)  # nothing to resume from
        materialize_sampling(dagster_home, store, key, shards, pool_limit, upstream=name == "unsharded")
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            tables[name] = pl.concat(
                [stored_table(defs, instance, asset, key) for asset in ("sampled_responses", "hallucinated_negatives")]
            )
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("sampled_responses"), asset_partitions=[key]), limit=1
            ).records[0]
            windows[name] = shard_windows(instance, record.event_log_entry.run_id)
            assert latest(instance, "sampled_responses", key)["chunks_reused"] == 0  # all decoded in this run

    assert tables["unsharded"].height == (3 + 1) * 40 and len(windows["unsharded"]) == 1
    for name in ("two_shards_pool_2", "two_shards_pool_1"):
        assert tables[name].equals(tables["unsharded"])  # every row, text and h, in order
        assert len({pid for *_, pid in windows[name].values()}) == 2  # two shard steps, two processes
    (a_start, a_end, _), (b_start, b_end, _) = windows["two_shards_pool_2"].values()
    assert a_start < b_end and b_start < a_end  # pool limit 2: the shards ran side by side
    (a_start, a_end, _), (b_start, b_end, _) = sorted(windows["two_shards_pool_1"].values())
    assert a_end <= b_start  # pool limit 1: the second shard waited for the first's GPU slot


def test_kubernetes_step_pods_request_gpus_for_the_gpu_pool_only() -> None:
    """The executor config validates against dagster-k8s's schema, and the Job dagster-k8s builds for a step (its
    own `construct_dagster_k8s_job`, as its tests do) limits `nvidia.com/gpu` exactly for the `gpu`-pool ops."""
    from dagster._config import process_config
    from dagster_k8s import k8s_job_executor
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    assert gpu_ops(all_assets) == GPU_STEPS
    config = kubernetes_config(all_assets, namespace="ml", gpus_per_step=2, cpu="8", memory="64Gi")
    assert process_config(k8s_job_executor.config_schema.config_type, config).success
    image = DagsterK8sJobConfig(job_image="registry/si-assets:1", dagster_home="/opt/dagster/home")

    def pod_resources(op: str):
        step_config = config["per_step_k8s_config"].get(op, config["step_k8s_config"])
        job = construct_dagster_k8s_job(
            image,
            ["dagster", "api", "execute_step"],
            f"dagster-step-{op.replace('_', '-')}",
            UserDefinedDagsterK8sConfig.from_dict(step_config),
        )
        return job.spec.template.spec.containers[0].resources

    for op in GPU_STEPS:
        assert pod_resources(op).limits == {"nvidia.com/gpu": "2"}
        assert pod_resources(op).requests == {"cpu": "8", "memory": "64Gi"}
    for op in ("unlabeled_images", "seed_checkpoint", "plan_shards", "merge_shards", "champion", "world_splits"):
        assert pod_resources(op).limits is None and pod_resources(op).requests == {"cpu": "8", "memory": "64Gi"}
    k8s = executor_from_env(all_assets, {"SI_EXECUTOR": "k8s", "SI_K8S_NAMESPACE": "ml", "SI_K8S_GPUS_PER_STEP": "2"})
    assert k8s.name == "k8s"


def test_celery_and_local_executors_resolve() -> None:
    gpu_tagged = {op.name for op in all_ops(all_assets) if op.tags.get("dagster-celery/queue") == "gpu"}
    assert sorted(gpu_tagged) == GPU_STEPS  # celery routes exactly the gpu-pool ops to the `gpu` queue
    celery = executor_from_env(all_assets, {"SI_EXECUTOR": "celery", "SI_CELERY_BROKER": "redis://queue:6379/0"})
    assert celery.name == "celery"
    assert executor_from_env(all_assets, {"SI_EXECUTOR": "multiprocess"}).name == "one_machine"
    with pytest.raises(ValueError, match="SI_EXECUTOR='spark': use one of in_process, multiprocess, k8s, celery"):
        executor_from_env(all_assets, {"SI_EXECUTOR": "spark"})
