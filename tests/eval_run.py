"""eval_scores run directly, the same checkpoint as seed and trained model (tests/test_coco.py, tests/test_amber.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from resources import ArtifactStoreResource, ComputeDevice, VisionLanguageModels
from si_assets.assets.evaluation import EvalConfig, eval_scores
from si_assets.storage import Checkpoint


def run_eval_scores(store_root: Path, config: EvalConfig, checkpoint_dir: Path) -> list:
    """What eval_scores yields for round-0001 on the CPU: its output, then the gate's and the answers' checks."""
    context = dg.build_asset_context(partition_key="round-0001", instance=dg.DagsterInstance.ephemeral())
    models = VisionLanguageModels(compute=ComputeDevice(device="cpu"))
    store = ArtifactStoreResource(root=str(store_root))
    model = Checkpoint(checkpoint_dir)
    return list(eval_scores(context, config, models, store, model, model, pl.DataFrame(), pl.DataFrame()))


@dataclass(frozen=True)
class EvalRun:
    output: dg.Output
    gate: dg.AssetCheckResult
    answers: dg.AssetCheckResult

    @property
    def table(self) -> pl.DataFrame:
        return self.output.value

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """split -> metric -> the trained model's value."""
        return {split: dict(zip(t["metric"], t["trained"])) for (split,), t in self.table.group_by("split")}

    @property
    def written(self) -> dict[str, str]:
        """`<split>/<model>` -> the path of its results.json."""
        meta = self.output.metadata
        return {k.removeprefix("results_json/"): v.path for k, v in meta.items() if k.startswith("results_json/")}


def evaluate_once(store_root: Path, config: EvalConfig, checkpoint_dir: Path) -> EvalRun:
    return EvalRun(*run_eval_scores(store_root, config, checkpoint_dir))
