"""The two jobs: the embedded world's bootstrap (unpartitioned, once) and one improvement round (per partition)."""

import dagster as dg

from si_assets.assets.common import BOOTSTRAP, COLLECTION, EVALUATION, OPTIMIZATION, ORGANIZATION, WORLD

BOOTSTRAP_ASSETS = dg.AssetSelection.groups(WORLD, BOOTSTRAP)
# Everything of one round; the cross-round summary follows by automation.
ROUND_ASSETS = dg.AssetSelection.groups(COLLECTION, ORGANIZATION, OPTIMIZATION, EVALUATION) - dg.AssetSelection.assets(
    "rounds_summary"
)

bootstrap_job = dg.define_asset_job(
    "bootstrap",
    selection=BOOTSTRAP_ASSETS,
    description="The embedded world's splits, the bootstrap seed model and the bootstrap CLIP (reused when unchanged).",
)

improvement_round_job = dg.define_asset_job(
    "improvement_round",
    selection=ROUND_ASSETS,  # partitioned by rounds, as its assets are
    description="One round: sample, verify, train, evaluate, and promote if the gate passes.",
)


def round_run_config(image_folder: str | None) -> dict:
    """Run config of a round that takes its images from `image_folder` (None: the embedded world)."""
    if not image_folder:
        return {}
    return {"ops": {"unlabeled_images": {"config": {"source": "folder", "folder": image_folder}}}}
