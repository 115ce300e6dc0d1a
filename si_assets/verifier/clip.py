"""The CLIP verifier: a tiny open_clip model for the embedded world, any open_clip model for real use.

Scores are cosine similarities of image and text embeddings. CLIP's text tower reads a fixed number of
tokens, so long responses are scored per sentence and averaged (`sentence_mean`) or cut (`truncate`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from PIL import Image
from safetensors.torch import save_file

from si_assets.storage.store import directory_hash, file_hash

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
ScoreMode = Literal["sentence_mean", "truncate"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def save_clip(model: CLIP, config: dict, directory: Path) -> Path:
    """A folder that `open_clip.create_model_and_transforms('local-dir:<folder>')` loads (safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    return directory


def load_clip(source: str, pretrained: str | None = None, device: str = "cpu"):
    """(model, preprocess, tokenizer) from a `local-dir:` folder, a folder path, or an open_clip model name
    with a pretrained tag or a local weights file. Fails with what to fix when the source is missing."""
    if Path(source).is_dir():
        source = f"local-dir:{source}"
    if source.startswith("local-dir:") and not (Path(source.removeprefix("local-dir:")) / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"CLIP folder {source!r} has no {CONFIG_FILE}; save it with save_clip() or point to a model name"
        )
    model, _, preprocess = open_clip.create_model_and_transforms(source, pretrained=pretrained, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(source)


BOOTSTRAP = "bootstrap"


@dataclass(frozen=True)
class VerifierSource:
    """Which CLIP judges the pairs: the bootstrap CLIP, an open_clip model name with a pretrained tag (from the hub
    or its cache) or a local weights file, or a folder holding open_clip_config.json + weights."""

    model: str = BOOTSTRAP
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.model == BOOTSTRAP and self.pretrained:
            raise ValueError("the bootstrap CLIP takes no `pretrained`; name an open_clip model to use one")
        if self.model not in (BOOTSTRAP, *open_clip.list_models()) and not Path(self.model).is_dir():
            raise ValueError(
                f"verifier {self.model!r} is neither 'bootstrap', an open_clip model name (open_clip.list_models(), "
                "e.g. 'ViT-L-14') nor a folder with open_clip_config.json"
            )
        if self.pretrained and _is_path(self.pretrained) and not Path(self.pretrained).is_file():
            raise ValueError(f"verifier weights file {self.pretrained!r} does not exist")

    def load_args(self, bootstrap_dir: Path) -> tuple[str, str | None]:
        """(model, pretrained) for `load_clip`."""
        return (str(bootstrap_dir), None) if self.model == BOOTSTRAP else (self.model, self.pretrained)

    def identity(self, bootstrap_version: str) -> str:
        """What the scores depend on: a content hash for local weights, the name and tag for published ones."""
        if self.model == BOOTSTRAP:
            return bootstrap_version
        if Path(self.model).is_dir():
            return f"dir:{directory_hash(Path(self.model))[:16]}"
        if self.pretrained and Path(self.pretrained).is_file():
            return f"{self.model}:file:{file_hash(Path(self.pretrained))[:16]}"
        return f"{self.model}:{self.pretrained}"


def _is_path(text: str) -> bool:
    return "/" in text or text.endswith((".safetensors", ".bin", ".pt", ".pth"))


def split_sentences(text: str) -> list[str]:
    parts = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    return parts or [text.strip()]


class ClipScorer:
    """Batched cosine similarity between images and texts."""

    def __init__(self, model: CLIP, preprocess, tokenizer, device: str = "cpu", batch_size: int = 256) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            out.append(F.normalize(self.model.encode_image(batch.to(self.device)), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size]))  # truncates to context
            out.append(F.normalize(self.model.encode_text(tokens.to(self.device)), dim=-1))
        return torch.cat(out)

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    def token_count(self, text: str) -> int:
        """Tokens CLIP's text tower would read, start and end tokens included, before its cut."""
        if hasattr(self.tokenizer, "encode"):
            return len(self.tokenizer.encode(text)) + 2
        return len(self.tokenizer.tokenizer(text)["input_ids"])  # open_clip's HF tokenizer wrapper

    def scored_texts(self, texts: Sequence[str], mode: ScoreMode) -> list[str]:
        """What the text tower reads for `texts` in `mode`: whole texts, or their sentences."""
        return list(texts) if mode == "truncate" else [s for t in texts for s in split_sentences(t)]

    def score(
        self, image_embeddings: torch.Tensor, texts: Sequence[str], mode: ScoreMode = "sentence_mean"
    ) -> np.ndarray:
        """Score text i against image embedding i."""
        if len(texts) != len(image_embeddings):
            raise ValueError(f"{len(texts)} texts for {len(image_embeddings)} images")
        if mode == "truncate":
            return (self.text_embeddings(texts) * image_embeddings).sum(-1).cpu().numpy()
        if mode != "sentence_mean":
            raise ValueError(f"unknown score mode {mode!r}; use 'sentence_mean' or 'truncate'")
        sentences = [split_sentences(t) for t in texts]
        owner = torch.tensor([i for i, s in enumerate(sentences) for _ in s])
        sims = (self.text_embeddings([s for ss in sentences for s in ss]) * image_embeddings[owner]).sum(-1)
        totals = torch.zeros(len(texts)).index_add_(0, owner, sims.cpu())
        counts = torch.bincount(owner, minlength=len(texts)).clamp(min=1)
        return (totals / counts).numpy()


def retrieval_recall_at_1(
    scorer: ClipScorer, images: Sequence[Image.Image], captions: Sequence[str], n_candidates: int = 50, seed: int = 0
) -> float:
    """Image→text recall@1 among its own caption and n_candidates-1 captions of other images (chance: 1/n)."""
    rng = np.random.default_rng(seed)
    img = scorer.image_embeddings(images)
    txt = scorer.text_embeddings(captions)
    hits = 0
    for i in range(len(images)):
        others = rng.choice(
            np.delete(np.arange(len(captions)), i), size=min(n_candidates - 1, len(captions) - 1), replace=False
        )
        candidates = np.concatenate([[i], others])
        sims = (txt[torch.from_numpy(candidates)] @ img[i]).numpy()
        hits += int(np.argmax(sims) == 0)
    return hits / len(images)
