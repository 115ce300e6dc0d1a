"""Decodes a small controlled-hallucination plan in chunks into a store (the resume test's subprocess).

    python -m tests.resume_worker MODEL_DIR STORE_DIR [--stall-after N]

With --stall-after N it decodes chunk N+1 and then hangs before storing it, as a worker would when killed
mid-sampling; the test kills it there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
from transformers import AutoModelForImageTextToText, AutoProcessor

from si_assets.collection.sampling import HallucinationRatios, decode_plan, plan_requests
from si_assets.modeling.mixed_decoding import SamplerSettings
from si_assets.storage import ArtifactStore
from si_assets.storage.chunks import ChunkStats, run_in_chunks
from si_assets.world import WorldSpec, decode_png, generate_split

ROWS_PER_CHUNK = 4
STALLED = "STALLED"


def plan() -> tuple[pl.DataFrame, dict]:
    images = generate_split(
        WorldSpec(seed=3, splits={"seed_train": 2, "clip_train": 2, "improve": 8, "dev": 2, "test": 2}), "improve"
    )
    requests = plan_requests(images, n_samples=2, n_negatives=1, ratios=HallucinationRatios(), base_seed=11)
    return requests, {i: decode_png(b) for i, b in zip(images["id"], images["image_png"])}


def run(model_dir: Path, store_dir: Path, stall_after: int | None = None) -> tuple[pl.DataFrame, ChunkStats]:
    model = AutoModelForImageTextToText.from_pretrained(model_dir, use_safetensors=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    requests, image_by_id = plan()
    settings = SamplerSettings(max_new_tokens=6)
    decoded = 0

    def decode(chunk: pl.DataFrame) -> pl.DataFrame:
        nonlocal decoded
        out = decode_plan(model, processor, chunk, image_by_id, settings, "tiny", batch_size=3)
        decoded += 1
        if stall_after is not None and decoded == stall_after + 1:
            (store_dir / STALLED).write_text("")
            time.sleep(600)  # killed here: this chunk's work is done but not stored
        return out

    return run_in_chunks(ArtifactStore(store_dir), "collected_responses", "test", requests, ROWS_PER_CHUNK, decode)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("store_dir", type=Path)
    parser.add_argument("--stall-after", type=int)
    args = parser.parse_args()
    table, stats = run(args.model_dir, args.store_dir, args.stall_after)
    print(json.dumps({"rows": table.height, **stats.__dict__}))
