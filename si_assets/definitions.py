"""The Dagster code location: assets by survey stage, resources, the demo job."""

from __future__ import annotations

import dagster as dg

from resources import (
    ArtifactStoreResource,
    ClipVerifier,
    ComputeDevice,
    ContentAddressedIOManager,
    VisionLanguageModels,
)
from si_assets.assets import bootstrap, collection, evaluation, optimization, organization, world

all_assets = dg.load_assets_from_modules([world, bootstrap, collection, organization, optimization, evaluation])

demo_job = dg.define_asset_job(
    "demo",
    selection=dg.AssetSelection.all(),
    description="The embedded default end to end: world, bootstrap models, one improvement round, evaluation.",
    executor_def=dg.in_process_executor,  # a handful of heavy steps: a process per step costs more than it buys
)


def build_resources() -> dict:
    compute = ComputeDevice()
    return {
        "io_manager": ContentAddressedIOManager(),
        "store": ArtifactStoreResource(),
        "compute": compute,
        "models": VisionLanguageModels(compute=compute),
        "clip": ClipVerifier(compute=compute),
    }


defs = dg.Definitions(assets=all_assets, jobs=[demo_job], resources=build_resources())
