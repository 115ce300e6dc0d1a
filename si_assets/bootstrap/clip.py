"""The bootstrap CLIP: a tiny open_clip model trained contrastively on the world's captioned split, with hard
negative captions (Dagster-free)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from PIL import Image
from pydantic import Field

from si_assets.bootstrap.schedule import warmup_cosine_scheduler
from si_assets.progress import progress
from si_assets.settings import Settings
from si_assets.verifier.clip import ClipScorer, load_clip, retrieval_recall_at_1, save_clip
from si_assets.verifier.regions import centred_box, masked_view
from si_assets.world import WorldSpec, caption_text, decode_png, hard_negative_caption
from si_assets.world.vocabulary import caption_mentions, caption_order_of, cooccurring_pairs, world_vocabulary


class TinyClipSpec(Settings):
    image_size: int = Field(48, ge=1)
    patch_size: int = Field(8, ge=1)
    vision_width: int = Field(64, ge=1)
    vision_layers: int = Field(3, ge=1)
    text_width: int = Field(64, ge=1)
    text_layers: int = Field(2, ge=1)
    context_length: int = Field(32, ge=1)
    embed_dim: int = Field(64, ge=1)

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


class ClipTrainConfig(Settings):
    seed: int = Field(0, ge=0)
    # 1,800 steps verify a little better (recall@1 .92 against .903) and cost the demo a minute. With 2 DPO epochs
    # (not 3) the round gains +5.5 instead of +6.8 and keeps its lead over random negatives, in 2 minutes less
    # (docs/results.md, "Training length")
    steps: int = Field(1200, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0)
    hard_negatives: bool = True
    negatives_per_image: int = Field(4, ge=1)  # candidates generated per caption
    negatives_per_step: int = Field(1, ge=1)  # how many of them each image meets in one batch
    retrieval_candidates: int = Field(50, ge=2, description="reported recall@1 ranks a caption among this many")
    # Region support shows CLIP one window at a time; a CLIP that has only seen whole scenes finds few objects alone
    # (docs/results.md, "What a second round needs: region support").
    object_window: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="also train on one window per object box (its side a share of the image's, the rest of the "
        "image masked as region support masks it), captioned with that object alone; 0: whole images only",
    )


def build_tiny_clip(spec: TinyClipSpec) -> CLIP:
    return CLIP(**spec.open_clip_config()["model_cfg"])


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


def training_views(
    table: pl.DataFrame, object_window: float = 0.0
) -> Iterator[tuple[Image.Image, str, list[tuple[str, str]]]]:
    """(image, caption, its mentions) per row; with `object_window` > 0, each followed by one masked window per
    object box (the `boxes` column, in the order of `objects`), captioned with that object alone."""
    columns = ["image_png", "caption", "objects", "colours"]
    if object_window:
        if "boxes" not in table.columns:
            raise ValueError(
                f"object_window={object_window} needs a `boxes` column (each object's left, top, right, bottom in "
                f"pixels, in the order of `objects`); the table has {table.columns}"
            )
        columns.append("boxes")
    for png, caption, objects, colours, *boxes in table.select(columns).iter_rows():
        image = decode_png(png)
        yield image, caption, caption_mentions(caption, objects, colours)
        if not boxes:
            continue
        side = max(1, round(min(image.size) * object_window))
        for kind, colour, box in zip(objects, colours, boxes[0], strict=True):
            window = centred_box(box, side, *image.size)
            yield masked_view(image, window), caption_text([(kind, colour)]), [(kind, colour)]


def training_examples(
    table: pl.DataFrame, preprocess: Callable, spec: WorldSpec, config: ClipTrainConfig
) -> tuple[torch.Tensor, list[str], list[list[str]]]:
    """(pixels, captions, hard negatives) of `training_views`, `config.negatives_per_image` negatives each, drawn
    with `spec`'s kinds, colours and partners by `config.seed`."""
    rng = np.random.default_rng(config.seed)
    images, captions, negatives = [], [], []
    for view, caption, mentions in training_views(table, config.object_window):
        images.append(preprocess(view))
        captions.append(caption)
        negatives.append([hard_negative_caption(mentions, spec, rng) for _ in range(config.negatives_per_image)])
    return torch.stack(images), captions, negatives


def train_bootstrap_clip(
    clip_train: pl.DataFrame,
    eval_split: pl.DataFrame,
    arch: TinyClipSpec,
    config: ClipTrainConfig,
    directory: Path,
    retrieval_candidates: int = 50,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train a tiny open_clip model on captions + hard negatives, save it as a `local-dir:` folder in
    `directory`, and report its image→text recall@1 on the held-out split."""
    torch.manual_seed(config.seed)
    save_clip(build_tiny_clip(arch), arch.open_clip_config(), directory)
    model, preprocess, tokenizer = load_clip(str(directory))  # the same preprocessing users get
    kinds, colours = world_vocabulary(clip_train)
    # Hard negatives add an object's usual partner where captions name it: read both off the captioned data.
    partner_spec = WorldSpec(
        kinds=kinds,
        colours={c: [0, 0, 0] for c in colours},
        cooccurrence=cooccurring_pairs(clip_train),
        caption_order=caption_order_of(clip_train),
        max_objects=1,
    )
    images, captions, negatives = training_examples(clip_train, preprocess, partner_spec, config)
    if log and config.object_window:
        log(f"CLIP training views: {clip_train.height} images and {len(captions) - clip_train.height} object windows")
    stats = train_clip(model, tokenizer, images, captions, negatives, config, log)
    save_clip(model, arch.open_clip_config(), directory)
    scorer = ClipScorer(model, preprocess, tokenizer)
    eval_images = [decode_png(b) for b in eval_split["image_png"]]
    recall = retrieval_recall_at_1(scorer, eval_images, eval_split["caption"].to_list(), retrieval_candidates)
    windows = len(captions) - clip_train.height
    return {
        **stats,
        "object_windows": windows,
        "eval_recall_at_1": recall,
        "chance_recall_at_1": 1 / retrieval_candidates,
    }
