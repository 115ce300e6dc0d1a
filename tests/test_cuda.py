"""The CUDA paths: device and dtype choice, decoding and DPO on the GPU, the memory pre-flight against free GPU
memory, and a whole round through Dagster on `cuda`. Skipped where there is no GPU (CI has none)."""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch

from resources import ComputeDevice, VisionLanguageModels
from si_assets.automation.runner import run_bootstrap, run_round
from si_assets.definitions import build_definitions, build_resources
from si_assets.modeling import preflight
from si_assets.modeling.generation import generate_greedy
from si_assets.modeling.mixed_decoding import MixedRequest, SamplerSettings, decode_mixed
from si_assets.optimization.dpo import DPOSettings, train_dpo
from si_assets.world import WorldSpec, decode_png, generate_split
from tests.test_graph import BOOTSTRAP_CONFIG, PASS_GATE, latest, round_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def images() -> pl.DataFrame:
    return generate_split(
        WorldSpec(seed=7, splits={"seed_train": 2, "clip_train": 2, "improve": 8, "dev": 2, "test": 2}), "improve"
    )


def test_auto_picks_cuda_with_bf16_where_supported() -> None:
    compute = ComputeDevice(device="auto")
    assert compute.torch_device().type == "cuda"
    assert compute.torch_dtype() == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    assert ComputeDevice(device="auto", dtype="float16").torch_dtype() == torch.float16
    assert ComputeDevice(device="cuda").shard_device(1).type == "cuda"


def test_decoding_on_the_gpu_keeps_its_guarantees(tiny_llava_dir: Path, images: pl.DataFrame) -> None:
    model, processor = VisionLanguageModels(compute=ComputeDevice(device="cuda", dtype="float32")).load(tiny_llava_dir)
    assert next(model.parameters()).is_cuda
    pics = [decode_png(b) for b in images["image_png"]]
    greedy = generate_greedy(model, processor, pics, ["Describe the image."] * len(pics), max_new_tokens=8)
    mixed = decode_mixed(
        model,
        processor,
        [MixedRequest(p, "Describe the image.", 0.0, seed=i) for i, p in enumerate(pics)],
        SamplerSettings(temperature=0, max_new_tokens=8),
    )
    assert mixed == greedy  # h = 0 on the mixture is plain greedy decoding, on the GPU too


def test_dpo_trains_in_bf16_on_the_gpu(tiny_llava_dir: Path, images: pl.DataFrame, tmp_path: Path) -> None:
    model, processor = VisionLanguageModels(compute=ComputeDevice(device="cuda", dtype="bfloat16")).load(tiny_llava_dir)
    by_id = {i: decode_png(b) for i, b in zip(images["id"], images["image_png"])}
    pairs = pl.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(images.height)],
            "image_id": images["id"],
            "prompt": ["Describe the image."] * images.height,
            "chosen": ["a red star."] * images.height,
            "rejected": ["a red star and a blue ring."] * images.height,
        }
    )
    peft_model, reference, result = train_dpo(
        model, processor, pairs, by_id, DPOSettings(epochs=1, batch_size=4), tmp_path
    )
    assert result.steps == 2 and reference is not None and reference.height == images.height
    assert next(peft_model.parameters()).dtype == torch.bfloat16


def test_memory_preflight_reads_free_gpu_memory() -> None:
    free = torch.cuda.mem_get_info()[0]
    required, available = preflight.memory(1000, torch.bfloat16, torch.device("cuda"))
    assert 0 < required < available and abs(available - free) < 0.1 * free
    with pytest.raises(preflight.PreflightError, match="free"):
        preflight.memory(free, torch.float32, torch.device("cuda"))  # 4 bytes per parameter: 4x the free memory


@pytest.mark.slow
def test_a_round_on_cuda(tmp_path: Path) -> None:
    defs = build_definitions(build_resources(str(tmp_path / "store"), device="cuda"))
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance, BOOTSTRAP_CONFIG)
    run = run_round(defs, instance, "round-0001", round_config(PASS_GATE))
    assert run.result.success
    assert latest(instance, "sampled_responses", "round-0001")["rows"] == 3 * 40
    assert latest(instance, "trained_model", "round-0001")["steps"] > 0
