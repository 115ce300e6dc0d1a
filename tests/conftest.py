"""Shared fixtures: small worlds, offline hub, a fixed thread count for reproducible CPU math."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from si_assets.world import WorldSpec  # noqa: E402

SMALL_SPLITS = {"seed_train": 240, "clip_train": 160, "improve": 40, "dev": 48, "test": 48}


@pytest.fixture
def small_spec() -> WorldSpec:
    return WorldSpec(seed=7, splits=SMALL_SPLITS)


@pytest.fixture(scope="package")  # built once for the whole suite (tests/ is one package)
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight tiny LLaVA + processor saved with save_pretrained (safetensors), as a pipeline loads one."""
    from tests.tiny_architectures import build_checkpoint

    return build_checkpoint("llava", tmp_path_factory.mktemp("tiny_llava"))
