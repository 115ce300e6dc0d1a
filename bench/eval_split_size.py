"""How large the evaluation splits must be: the bootstrap standard error of each headline metric, for the first N
images of the dev and test splits, for the bootstrap seed and for the latest round's trained model.

Reads the evaluations `make demo` stored (nothing is generated again). The protocol asks for precision's standard
error to be at most a point on each split.

    SI_STORE=.si_store .venv/bin/python bench/eval_split_size.py [--sizes 300 1000] [--world JSON]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402

from resources import ComputeDevice, VisionLanguageModels  # noqa: E402
from si_assets.evaluation.data import EvalSettings  # noqa: E402
from si_assets.evaluation.uncertainty import counts_of, standard_error  # noqa: E402
from si_assets.rounds.steps import score_checkpoint  # noqa: E402
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.world import WorldSpec, generate_split  # noqa: E402

SHOWN = ("precision", "recall", "chair_s", "pope_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[300, 1000])
    parser.add_argument("--round", default="round-0001", help="the round whose seed and trained model are read")
    parser.add_argument("--world", type=json.loads, default={}, help="the world's config (WorldConfig) as JSON")
    args = parser.parse_args()
    store = ArtifactStore(os.environ.get("SI_STORE", ".si_store"))
    models = VisionLanguageModels(compute=ComputeDevice(device="cpu"))
    settings = EvalSettings()
    checkpoints = {
        model: store.local_checkpoint(store.head(asset, args.round))
        for model, asset in (("seed", "seed_checkpoint"), ("trained", "trained_model"))
    }
    rows = []
    for split in ("dev", "test"):
        data = settings.data(split, generate_split(WorldSpec(**args.world), split))  # the split the round saw
        for model, checkpoint in checkpoints.items():
            # the evaluation eval_scores stored: read back, not generated again
            captions = score_checkpoint(settings, models, store, checkpoint, data, print).captions
            for size in args.sizes:
                counts = counts_of(captions.head(size))
                errors = {m: standard_error(counts, m) * 100 for m in SHOWN}
                rows.append({"split": split, "model": model, "images": min(size, captions.height), **errors})
    with pl.Config(tbl_rows=-1, float_precision=2, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print("bootstrap standard error, in points (1,000 resamples):")
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
