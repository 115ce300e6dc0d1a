"""The Dagster code location: assets by survey stage, resources, jobs, schedule and sensors."""

from __future__ import annotations

import os

import dagster as dg

from resources import (
    ArtifactStoreResource,
    ClipVerifier,
    ComputeDevice,
    ContentAddressedIOManager,
    ImageInbox,
    VisionLanguageModels,
    lakefs_store_from_env,
)
from si_assets.assets import bootstrap, collection, evaluation, optimization, organization, sampling, world
from si_assets.assets.common import STEP_IO_MANAGER
from si_assets.automation import (
    automation_sensor,
    bootstrap_job,
    improvement_round_job,
    improvement_round_schedule,
    new_images_sensor,
)
from si_assets.automation.executors import executor_from_env

all_assets = dg.load_assets_from_modules(
    [world, bootstrap, collection, sampling, organization, optimization, evaluation]
)


def build_resources(store_root: str | None = None, device: str | None = None) -> dict:
    """The resources of the code location; tests and benchmarks pass their own store folder and device.
    `SI_STORE_BACKEND=lakefs` puts the artifacts in lakeFS; `SI_DEVICE`, `SI_DTYPE` and `SI_TRUST_REMOTE_CODE=1` set
    the compute device, the weights' dtype and remote code (docs/operations.md, "lakeFS" and "Environment
    variables")."""
    compute = ComputeDevice(
        device=device or os.environ.get("SI_DEVICE", "auto"), dtype=os.environ.get("SI_DTYPE", "auto")
    )
    remote_code = os.environ.get("SI_TRUST_REMOTE_CODE") == "1"
    if store_root:
        store = ArtifactStoreResource(root=store_root)
    elif os.environ.get("SI_STORE_BACKEND") == "lakefs":
        store = lakefs_store_from_env()
    else:
        store = ArtifactStoreResource()
    return {
        "io_manager": ContentAddressedIOManager(store=store),
        # Dagster's own pickling IO manager, under the instance's storage folder; clusters configure a shared one.
        STEP_IO_MANAGER: dg.FilesystemIOManager(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),  # torchrun workers of distributed DPO
        "store": store,
        "compute": compute,
        "models": VisionLanguageModels(compute=compute, trust_remote_code=remote_code),
        "clip": ClipVerifier(compute=compute),
        "inbox": ImageInbox(),
    }


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=all_assets,
        jobs=[bootstrap_job, improvement_round_job],
        schedules=[improvement_round_schedule],
        sensors=[new_images_sensor, automation_sensor],
        resources=resources or build_resources(),
        # Default in-process: a handful of heavy steps, where a process per step costs more than it buys (also for
        # automation's runs). SI_EXECUTOR picks processes, Kubernetes or Celery (docs/operations.md, "Scale out").
        executor=executor_from_env(all_assets),
    )


defs = build_definitions()
