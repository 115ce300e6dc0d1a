"""The one learning-rate schedule every trainer here uses: linear warm-up, cosine decay to a floor."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak rate at `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_share: float = 0.1, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, int(total * warmup_share))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup, min_ratio))
