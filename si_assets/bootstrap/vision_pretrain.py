"""Stage 1 of the bootstrap: pretrain the vision tower to recognise objects.

Real MLLMs start from a pretrained vision encoder (LLaVA from CLIP ViT-L); a randomly initialised tower
makes a toy LLaVA ignore the image for most of its training. A short multi-label classification of
object kinds and kind-colour pairs, on patch features averaged over the image, gives the tower what a
pretrained encoder would give, in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from si_assets.bootstrap.schedule import warmup_cosine_scheduler
from si_assets.progress import progress


def multi_hot(
    objects: Sequence[Sequence[str]],
    colours: Sequence[Sequence[str]],
    kinds: Sequence[str],
    colour_names: Sequence[str],
) -> torch.Tensor:
    """Targets: one slot per kind, then one per (kind, colour)."""
    k_index = {k: i for i, k in enumerate(kinds)}
    c_index = {c: i for i, c in enumerate(colour_names)}
    out = torch.zeros(len(objects), len(kinds) * (1 + len(colour_names)))
    for row, (objs, cols) in enumerate(zip(objects, colours)):
        for kind, colour in zip(objs, cols):
            out[row, k_index[kind]] = 1
            out[row, len(kinds) + k_index[kind] * len(colour_names) + c_index[colour]] = 1
    return out


def pretrain_vision_tower(
    vision_tower: nn.Module,
    pixel_values: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Trains `vision_tower` in place; the classification head is thrown away afterwards."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    width = vision_tower.config.hidden_size
    head = nn.Linear(width, targets.shape[1])
    params = list(vision_tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = warmup_cosine_scheduler(optimizer, steps)
    loss_fn = nn.BCEWithLogitsLoss()
    vision_tower.train()
    started, loss = time.perf_counter(), torch.tensor(0.0)
    with progress(steps, "vision pretraining", log) as bar:
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(len(pixel_values), size=batch_size, replace=False))
            hidden = vision_tower(pixel_values=pixel_values[idx]).last_hidden_state[:, 1:]  # patches, no CLS
            loss = loss_fn(head(hidden.mean(dim=1)), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
    vision_tower.eval()
    with torch.no_grad():
        sample = torch.arange(min(512, len(pixel_values)))
        logits = head(vision_tower(pixel_values=pixel_values[sample]).last_hidden_state[:, 1:].mean(dim=1))
        predicted, truth = logits > 0, targets[sample] > 0.5
        tp = float((predicted & truth).sum())
        f1 = 2 * tp / max(1.0, float(predicted.sum() + truth.sum()))
    return {"final_loss": float(loss.detach()), "train_label_f1": f1, "seconds": time.perf_counter() - started}
