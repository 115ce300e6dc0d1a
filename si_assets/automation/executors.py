"""Where the steps of a run execute, chosen by `SI_EXECUTOR` (docs/operations.md, "Scale out"):

- `in_process` (default): every step in the run's process; a few heavy steps gain nothing from more.
- `multiprocess`: a process per step on one machine, started by a forkserver that has imported the code location
  once; steps of the `gpu` pool run as many at once as the pool's limit (`dagster instance concurrency set gpu N`,
  N = GPUs), so sampling shards spread over the GPUs and never two steps share one.
- `k8s`: dagster-k8s's `k8s_job_executor`, a Kubernetes Job per step; `gpu`-pool steps request GPUs.
- `celery`: dagster-celery's executor; `gpu`-pool steps go to the `gpu` queue, served by workers on GPU machines.

Cluster executors are imported only when chosen (`pip install -e '.[cluster]'`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import dagster as dg

from si_assets.assets.common import GPU_POOL

EXECUTORS = ("in_process", "multiprocess", "k8s", "celery")
# Steps started by the forkserver find these already imported (torch, transformers, the assets).
PRELOADED = ["si_assets.definitions"]


def all_ops(assets: Iterable[dg.AssetsDefinition]) -> list[dg.OpDefinition]:
    """The ops that compute `assets`, inside graph-backed assets too."""
    ops: list[dg.OpDefinition] = []
    for asset in assets:
        node = asset.node_def
        ops.extend(node.iterate_op_defs() if isinstance(node, dg.GraphDefinition) else [node])
    return ops


def gpu_ops(assets: Iterable[dg.AssetsDefinition]) -> list[str]:
    """Names of the ops in the `gpu` pool."""
    return sorted({op.name for op in all_ops(assets) if op.pool == GPU_POOL})


def one_machine(max_concurrent: int = 0) -> dg.ExecutorDefinition:
    """Processes on this machine (0: as many at once as CPUs); the `gpu` pool bounds the heavy ones."""
    return dg.multiprocess_executor.configured(
        {"max_concurrent": max_concurrent, "start_method": {"forkserver": {"preload_modules": PRELOADED}}},
        name="one_machine",
    )


def k8s_step_config(gpus_per_step: int, cpu: str, memory: str) -> tuple[dict, dict]:
    """(every step's container resources, a `gpu`-pool step's): GPU steps add `nvidia.com/gpu` limits."""
    base = {"container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}}}}
    gpu = {
        "container_config": {
            "resources": {
                "requests": {"cpu": cpu, "memory": memory},
                "limits": {"nvidia.com/gpu": str(gpus_per_step)},
            }
        }
    }
    return base, gpu


def kubernetes_config(
    assets: Iterable[dg.AssetsDefinition],
    namespace: str = "dagster",
    gpus_per_step: int = 1,
    cpu: str = "4",
    memory: str = "32Gi",
    max_concurrent: int = 8,
) -> dict:
    """`k8s_job_executor` config: a Job per step, `gpu`-pool ops with GPU limits, the rest CPU and memory only."""
    base, gpu = k8s_step_config(gpus_per_step, cpu, memory)
    return {
        "job_namespace": namespace,
        "max_concurrent": max_concurrent,
        "step_k8s_config": base,
        "per_step_k8s_config": {op: gpu for op in gpu_ops(assets)},
    }


def kubernetes(assets: Iterable[dg.AssetsDefinition], **settings) -> dg.ExecutorDefinition:
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(kubernetes_config(assets, **settings), name="k8s")


def celery(broker: str, backend: str) -> dg.ExecutorDefinition:
    from dagster_celery import celery_executor

    return celery_executor.configured({"broker": broker, "backend": backend, "include": PRELOADED}, name="celery")


def executor_from_env(
    assets: Iterable[dg.AssetsDefinition], env: Mapping[str, str] = os.environ
) -> dg.ExecutorDefinition:
    choice = env.get("SI_EXECUTOR", "in_process")
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return one_machine(int(env.get("SI_MAX_CONCURRENT", "0")))
    if choice == "k8s":
        return kubernetes(
            assets,
            namespace=env.get("SI_K8S_NAMESPACE", "dagster"),
            gpus_per_step=int(env.get("SI_K8S_GPUS_PER_STEP", "1")),
            cpu=env.get("SI_K8S_CPU", "4"),
            memory=env.get("SI_K8S_MEMORY", "32Gi"),
        )
    if choice == "celery":
        return celery(env.get("SI_CELERY_BROKER", "pyamqp://guest@localhost//"), env.get("SI_CELERY_BACKEND", "rpc://"))
    raise ValueError(f"SI_EXECUTOR={choice!r}: use one of {', '.join(EXECUTORS)}")
