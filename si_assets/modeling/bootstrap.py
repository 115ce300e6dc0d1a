"""Bootstrap the seed model from the world's captioned split (Dagster-free)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import torch

from si_assets.modeling.sft import QA_TEMPLATE, SFTConfig, SFTResult, build_examples, encode_examples, train_sft
from si_assets.modeling.tiny_vlm import TinyVLMSpec, build_model, build_processor, build_tokenizer
from si_assets.modeling.vision_pretrain import multi_hot, pretrain_vision_tower
from si_assets.world import CAPTION_PROMPTS, decode_png


def tokenizer_corpus(captions: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Everything the seed will read or write: captions, prompts, questions, answers, the chat frame."""
    questions = [QA_TEMPLATE.format(kind=k) for k in kinds]
    frame = ["USER: ASSISTANT:", "yes.", "no."]
    return list(captions) + (list(CAPTION_PROMPTS) + questions + frame) * 50


def train_seed_model(
    seed_train: pl.DataFrame,
    kinds: Sequence[str],
    colours: Sequence[str],
    model_spec: TinyVLMSpec,
    sft: SFTConfig,
    log: Callable[[str], None] | None = None,
):
    """Tokenizer, processor and LLaVA built from scratch, the vision tower pretrained on object labels,
    then SFT with early stopping on a held-back
    slice of seed_train (never on eval). Returns (model, processor, SFTResult)."""
    torch.manual_seed(sft.seed)
    rng = np.random.default_rng(sft.seed)
    tokenizer = build_tokenizer(tokenizer_corpus(seed_train["caption"].to_list(), kinds), model_spec.vocab_size)
    processor = build_processor(tokenizer, model_spec)
    model = build_model(tokenizer, model_spec)

    val_rows = seed_train.head(sft.val_size)
    train_rows = seed_train.slice(sft.val_size)
    if sft.vision_pretrain_steps:
        pixels = processor.image_processor([decode_png(b) for b in train_rows["image_png"]], return_tensors="pt")[
            "pixel_values"
        ]
        targets = multi_hot(train_rows["objects"].to_list(), train_rows["colours"].to_list(), kinds, colours)
        stats = pretrain_vision_tower(
            model.model.vision_tower, pixels, targets, sft.vision_pretrain_steps, seed=sft.seed, log=log
        )
        if log:
            log(f"vision pretraining: {stats}")
    train = encode_examples(processor, build_examples(train_rows, kinds, sft, rng))
    # Validation: image-conditioned captions only — the behaviour evaluation measures.
    val_cfg = sft.model_copy(update={"image_dropout": 0.0, "qa_share": 0.0})
    val = encode_examples(processor, build_examples(val_rows, kinds, val_cfg, rng))
    if log:
        log(
            f"seed SFT: {len(train)} examples, {sum(p is None for p in train.pixel_values)} without image; "
            f"{sum(p.numel() for p in model.parameters()):,} parameters"
        )
    result: SFTResult = train_sft(model, processor, train, val, sft, log)
    return model, processor, result
