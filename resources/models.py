"""Loading image-text-to-text models and the CLIP verifier once per step, safely."""

from pathlib import Path

import dagster as dg
from pydantic import Field
from transformers import AutoModelForImageTextToText, AutoProcessor

from resources.device import ComputeDevice
from si_assets.verifier.clip import ClipScorer, load_clip


class VisionLanguageModels(dg.ConfigurableResource):
    """Loads a checkpoint folder or hub id with its processor. Weights come only from safetensors and no
    remote code runs unless `trust_remote_code` is set."""

    compute: ComputeDevice
    trust_remote_code: bool = False
    revision: str | None = Field(None, description="hub revision (commit, tag, branch) for hub ids")

    def load_processor(self, source: str | Path):
        return AutoProcessor.from_pretrained(
            str(source), revision=self.revision, trust_remote_code=self.trust_remote_code
        )

    def load(self, source: str | Path):
        device = self.compute.torch_device()
        processor = self.load_processor(source)
        model = AutoModelForImageTextToText.from_pretrained(
            str(source),
            revision=self.revision,
            dtype=self.compute.dtype(),
            use_safetensors=True,
            trust_remote_code=self.trust_remote_code,
        ).to(device)
        model.eval()
        return model, processor


class ClipVerifier(dg.ConfigurableResource):
    """An open_clip model by name + pretrained tag, or a local folder (the bootstrap CLIP's)."""

    compute: ComputeDevice
    batch_size: int = 256

    def device_name(self) -> str:
        return str(self.compute.torch_device())

    def scorer(self, source: str | Path, pretrained: str | None = None) -> ClipScorer:
        device = str(self.compute.torch_device())
        model, preprocess, tokenizer = load_clip(str(source), pretrained=pretrained, device=device)
        return ClipScorer(model, preprocess, tokenizer, device=device, batch_size=self.batch_size)
