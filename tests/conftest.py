"""Shared fixtures: small worlds, offline hub, a fixed thread count for reproducible CPU math."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from si_assets.world import WorldSpec  # noqa: E402

SMALL_SPLITS = {"seed_train": 240, "clip_train": 160, "improve": 40, "eval": 48}


@pytest.fixture
def small_spec() -> WorldSpec:
    return WorldSpec(seed=7, splits=SMALL_SPLITS)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight tiny LLaVA + processor saved with save_pretrained (safetensors), as a pipeline loads one."""
    import torch

    from si_assets.modeling.bootstrap import tokenizer_corpus
    from si_assets.modeling.tiny_vlm import TinyVLMSpec, build_model, build_processor, build_tokenizer
    from si_assets.world import generate_split

    spec = WorldSpec(seed=7, splits={"seed_train": 40, "clip_train": 2, "improve": 2, "eval": 2})
    captions = generate_split(spec, "seed_train")["caption"].to_list()
    tokenizer = build_tokenizer(tokenizer_corpus(captions, spec.kinds), 300)
    torch.manual_seed(0)
    model = build_model(tokenizer, TinyVLMSpec()).eval()
    with torch.no_grad():  # the default init is so small that every input decodes to the same text
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(folder)
    build_processor(tokenizer, TinyVLMSpec()).save_pretrained(folder)
    return folder
