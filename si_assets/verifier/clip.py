"""The CLIP verifier: a tiny open_clip model for the embedded world, any open_clip model for real use.

Scores are cosine similarities of image and text embeddings. CLIP's text tower reads a fixed number of
tokens, so long responses are scored per sentence and averaged (`sentence_mean`) or cut (`truncate`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from PIL import Image
from pydantic import BaseModel, ConfigDict
from safetensors.torch import save_file

from si_assets.modeling.schedule import warmup_cosine_scheduler
from si_assets.progress import progress
from si_assets.storage.store import directory_hash, file_hash

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
ScoreMode = Literal["sentence_mean", "truncate"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class TinyClipSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    image_size: int = 48
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 3
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 32
    embed_dim: int = 64

    def open_clip_config(self) -> dict:
        """The `open_clip_config.json` layout open_clip's `local-dir:` loader reads."""
        return {
            "model_cfg": {
                "embed_dim": self.embed_dim,
                "vision_cfg": {
                    "image_size": self.image_size,
                    "layers": self.vision_layers,
                    "width": self.vision_width,
                    "head_width": 32,
                    "patch_size": self.patch_size,
                },
                "text_cfg": {
                    "context_length": self.context_length,
                    "vocab_size": 49408,
                    "width": self.text_width,
                    "heads": 4,
                    "layers": self.text_layers,
                },
            },
            "preprocess_cfg": {
                "size": self.image_size,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "interpolation": "bicubic",
                "resize_mode": "shortest",
            },
        }


class ClipTrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    seed: int = 0
    # 1,800 steps verify a little better (recall@1 .92 against .903) and cost the demo a minute. With 2 DPO epochs
    # (not 3) the round gains +5.5 instead of +6.8 and keeps its lead over random negatives, in 2 minutes less
    # (docs/round_experiments.md §14)
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    hard_negatives: bool = True
    negatives_per_image: int = 4  # candidates generated per caption
    negatives_per_step: int = 1  # how many of them each image meets in one batch


def build_tiny_clip(spec: TinyClipSpec) -> CLIP:
    return CLIP(**spec.open_clip_config()["model_cfg"])


def save_clip(model: CLIP, config: dict, directory: Path) -> Path:
    """A folder that `open_clip.create_model_and_transforms('local-dir:<folder>')` loads (safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    return directory


def train_clip(
    model: CLIP,
    tokenizer,
    images: torch.Tensor,
    captions: Sequence[str],
    hard_negatives: Sequence[Sequence[str]] | None,
    config: ClipTrainConfig,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Symmetric InfoNCE over the batch; each image also sees one of its hard-negative captions (its own
    caption with an absent object added or a kind/colour changed), so the verifier learns what a
    hallucination is. `hard_negatives[i]` are image i's candidates, all of the same count."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tokens = tokenizer(list(captions))
    neg_tokens = None
    if hard_negatives is not None and config.hard_negatives:
        per_image = len(hard_negatives[0])
        if any(len(n) != per_image for n in hard_negatives) or len(hard_negatives) != len(captions):
            raise ValueError("hard_negatives needs the same number of candidates for every caption")
        neg_tokens = tokenizer([n for negs in hard_negatives for n in negs]).view(len(captions), per_image, -1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.1)
    schedule = warmup_cosine_scheduler(optimizer, config.steps)
    model.train()
    started, loss = time.perf_counter(), torch.tensor(0.0)
    with progress(config.steps, "CLIP training", log) as bar:
        for _ in range(config.steps):
            idx = torch.from_numpy(rng.choice(len(images), size=config.batch_size, replace=False))
            if neg_tokens is None:
                text = tokens[idx]
            else:
                text = torch.cat([tokens[idx], _pick_negatives(neg_tokens, idx, config.negatives_per_step, rng)])
            img_emb = F.normalize(model.encode_image(images[idx]), dim=-1)
            txt_emb = F.normalize(model.encode_text(text), dim=-1)
            logits = model.logit_scale.exp() * img_emb @ txt_emb.T  # (B, B) or (B, 2B)
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(idx)].T, target)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            bar.update(1)
    model.eval()
    return {"final_loss": float(loss.detach()), "seconds": time.perf_counter() - started}


def _pick_negatives(
    neg_tokens: torch.Tensor, idx: torch.Tensor, per_step: int, rng: np.random.Generator
) -> torch.Tensor:
    """`per_step` distinct hard negatives of each image in the batch, stacked image-major."""
    candidates = neg_tokens.shape[1]
    if per_step <= 1:
        pick = torch.from_numpy(rng.integers(candidates, size=len(idx)))
        return neg_tokens[idx, pick]
    picks = torch.from_numpy(np.argsort(rng.random((len(idx), candidates)), axis=1)[:, : min(per_step, candidates)])
    return neg_tokens[idx[:, None], picks].reshape(-1, neg_tokens.shape[-1])


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
