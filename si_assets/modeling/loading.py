"""Loading an image-text-to-text checkpoint safely (Dagster-free): the resource and the distributed DPO worker
share it. Weights come only from safetensors; no remote code runs unless asked for."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor


def load_processor(source: str | Path, trust_remote_code: bool = False):
    return AutoProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)


def load_checkpoint(source: str | Path, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """(model, processor), the model on `device` in eval mode."""
    processor = load_processor(source, trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        str(source), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    ).to(device)
    model.eval()
    return model, processor
