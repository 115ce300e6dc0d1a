"""The architecture matrix: a whole round (controlled-hallucination decoding, CLIP verification, DPO with LoRA,
evaluation) materialized through Dagster on tiny random-weight LLaVA, Qwen2-VL, Idefics3, SmolVLM and Gemma3
checkpoints given as `seed_checkpoint.base`, each loaded through the Auto* classes and prompted through its own chat
template. (PaliGemma and Mllama are refused by pre-flight: tests/test_preflight.py.)"""

from pathlib import Path

import dagster as dg
import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from si_assets.automation.runner import run_bootstrap, run_round
from si_assets.definitions import build_definitions, build_resources
from si_assets.modeling.chat import user_prompt
from tests.test_graph import BOOTSTRAP_CONFIG, REFUSE_GATE, latest, round_config
from tests.tiny_architectures import ARCHITECTURES, assert_merged_lora, build_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[dg.Definitions, dg.DagsterInstance]:
    """The small world and its CLIP; the seed model of every round here is a configured base, never promoted
    (the gate refuses, so each round starts from its own base)."""
    defs = build_definitions(build_resources(str(tmp_path_factory.mktemp("store")), device="cpu"))
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance, BOOTSTRAP_CONFIG)
    return defs, instance


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_a_round_runs_on_each_architecture(
    architecture: str, bootstrapped: tuple[dg.Definitions, dg.DagsterInstance], tmp_path: Path
) -> None:
    defs, instance = bootstrapped
    base = build_checkpoint(architecture, tmp_path / architecture)
    key = f"round-{list(ARCHITECTURES).index(architecture) + 1:04d}"
    config = round_config(REFUSE_GATE)
    config["ops"]["seed_checkpoint"] = {"config": {"base": str(base)}}
    run = run_round(defs, instance, key, config)
    assert run.refused  # every step ran; only the (impossible) gate stopped the promotion

    assert latest(instance, "seed_checkpoint", key)["source"] == f"base: {base}"
    positives = run.result.output_for_node("collected_responses", "sampled_responses")
    assert positives.height == 3 * 40 and positives["response"].str.len_chars().min() > 0
    pairs = latest(instance, "verified_pairs", key)
    assert pairs["kept"] + pairs["reversed"] > 0
    trained = latest(instance, "trained_model", key)
    assert trained["steps"] > 0
    assert trained["training_pairs"] == pairs["kept"] + pairs["reversed"] + pairs["probe_pairs"]
    scores = latest(instance, "eval_scores", key)
    for metric in ("precision", "recall", "pope_f1"):
        assert 0.0 <= scores[f"test/trained/{metric}"] <= 1.0

    # The merged checkpoint is the same family, loads with plain from_pretrained, and DPO changed its weights.
    trained_dir = Path(trained["path"])
    model = AutoModelForImageTextToText.from_pretrained(trained_dir, use_safetensors=True)
    seed = AutoModelForImageTextToText.from_pretrained(base, use_safetensors=True)
    assert type(model) is type(seed)
    assert_merged_lora(model, seed)
    processor = AutoProcessor.from_pretrained(trained_dir)
    assert user_prompt(processor, "Describe.") == user_prompt(AutoProcessor.from_pretrained(base), "Describe.")
