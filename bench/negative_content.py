"""What the controlled-hallucination negatives hold, per decoding setting: do they hallucinate the language prior?

A hallucinated mention is a "partner" when it names the usual companion of an object in the image (what the
world's caption noise teaches the prior), else "other". For each setting (mix space, negative ratio
mu_neg and sd_neg, prior delay) the round's responses are decoded on the head of `improve` and the positives and
negatives are counted against the labels (diagnosis only: the loop never reads them). Reuses the world and bootstrap
models of `make demo`.

    .venv/bin/python bench/negative_content.py [--images 300] [--grid JSON]
"""

from __future__ import annotations

import argparse
import json

import polars as pl
from pair_diagnostics import Labels
from round_ablation import build_bench, responses_for

from si_assets.collection.sampling import NEGATIVE, POSITIVE, SamplingSettings

GRID = [
    {"mix_space": "probs", "mu_neg": 0.15, "sd_neg": 0.05, "prior_delay": 0},  # the default
    {"mix_space": "probs", "mu_neg": 0.35, "sd_neg": 0.1, "prior_delay": 0},  # h ~ N(.35, .1)
    {"mix_space": "logits", "mu_neg": 0.35, "sd_neg": 0.1, "prior_delay": 0},
    {"mix_space": "logits", "mu_neg": 0.6, "sd_neg": 0.1, "prior_delay": 0},
    {"mix_space": "logits", "mu_neg": 0.8, "sd_neg": 0.1, "prior_delay": 0},
    {"mix_space": "probs", "mu_neg": 0.35, "sd_neg": 0.1, "prior_delay": 4},  # 4 tokens: "a red circle," grounded
    {"mix_space": "probs", "mu_neg": 0.6, "sd_neg": 0.1, "prior_delay": 4},
    {"mix_space": "probs", "mu_neg": 0.6, "sd_neg": 0.1, "prior_delay": 8},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="unlabeled images decoded (the improve split's head)")
    parser.add_argument("--grid", type=json.loads, default=GRID, help="settings as a JSON list (see GRID)")
    args = parser.parse_args()
    bench = build_bench(args.images, {}, {}, {})
    labels = Labels(bench.spec)
    for setting in args.grid:
        responses = responses_for(bench, SamplingSettings(**setting), bench.seed)
        for role in (POSITIVE, NEGATIVE):
            part = responses.filter(pl.col("role") == role)
            words = part["response"].str.split(" ").list.len().mean()
            counts = labels.summary(part["image_id"].to_list(), part["response"].to_list())
            print(f"{json.dumps(setting)} {role}: {counts}, words {words:.2f}", flush=True)


if __name__ == "__main__":
    main()
