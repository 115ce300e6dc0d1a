"""Loading image-text-to-text models and the CLIP verifier once per step, safely."""

from pathlib import Path

import dagster as dg
import torch

from resources.device import ComputeDevice
from si_assets.modeling.loading import load_checkpoint, load_processor
from si_assets.modeling.preflight import CheckpointReport, check_checkpoint
from si_assets.verifier.clip import ClipScorer, load_clip


class VisionLanguageModels(dg.ConfigurableResource):
    """Loads a checkpoint folder with its processor on the compute device. Weights come only from safetensors
    and no remote code runs unless `trust_remote_code` is set. (Hub ids resolve to folders in `seed_checkpoint`.)"""

    compute: ComputeDevice
    trust_remote_code: bool = False

    def load_processor(self, source: str | Path):
        return load_processor(source, self.trust_remote_code)

    def load(self, source: str | Path, device: torch.device | None = None):
        """(model, processor) on `device` (default: the compute device), in eval mode."""
        device = device or self.compute.torch_device()
        return load_checkpoint(source, device, self.compute.torch_dtype(), self.trust_remote_code)

    def preflight(self, source: str | Path) -> CheckpointReport:
        """The checks that need only the checkpoint's files, against this device and dtype."""
        return check_checkpoint(
            Path(source), self.compute.torch_device(), self.compute.torch_dtype(), self.trust_remote_code
        )


class ClipVerifier(dg.ConfigurableResource):
    """An open_clip model by name + pretrained tag or weights file, or a local folder (the bootstrap CLIP's)."""

    compute: ComputeDevice
    batch_size: int = 256

    def device_name(self) -> str:
        return str(self.compute.torch_device())

    def scorer(self, source: str | Path, pretrained: str | None = None) -> ClipScorer:
        device = str(self.compute.torch_device())
        model, preprocess, tokenizer = load_clip(str(source), pretrained=pretrained, device=device)
        return ClipScorer(model, preprocess, tokenizer, device=device, batch_size=self.batch_size)
