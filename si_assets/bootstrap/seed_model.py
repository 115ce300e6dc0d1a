"""Bootstrap the seed model from the world's captioned split (Dagster-free)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from si_assets.bootstrap.schedule import warmup_cosine
from si_assets.bootstrap.sft import (
    QA_TEMPLATE,
    EncodedExamples,
    SFTConfig,
    SFTResult,
    build_examples,
    encode_examples,
    train_sft,
)
from si_assets.bootstrap.tiny_vlm import TinyVLMSpec, build_model, build_processor, build_tokenizer
from si_assets.bootstrap.vision_pretrain import multi_hot, pretrain_vision_tower
from si_assets.bootstrap.yes_no import YesNoSkill, yes_no_skill
from si_assets.world import CAPTION_PROMPTS, decode_png
from si_assets.world.vocabulary import world_vocabulary


def tokenizer_corpus(captions: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Everything the seed will read or write: captions, prompts, questions, answers, the chat frame."""
    questions = [QA_TEMPLATE.format(kind=k) for k in kinds]
    frame = ["USER: ASSISTANT:", "yes.", "no."]
    return list(captions) + (list(CAPTION_PROMPTS) + questions + frame) * 50


def sft_data(
    processor, seed_train: pl.DataFrame, kinds: Sequence[str], sft: SFTConfig, rng: np.random.Generator
) -> tuple[EncodedExamples, EncodedExamples]:
    """(train, validation) examples: the first `val_size` images are held back, their image-conditioned captions
    only (the behaviour evaluation measures)."""
    val_rows, train_rows = seed_train.head(sft.val_size), seed_train.slice(sft.val_size)
    train = encode_examples(processor, build_examples(train_rows, kinds, sft, rng))
    val_cfg = sft.model_copy(update={"image_dropout": 0.0, "qa_share": 0.0})
    return train, encode_examples(processor, build_examples(val_rows, kinds, val_cfg, rng))


def continue_training(
    model,
    processor,
    seed_train: pl.DataFrame,
    kinds: Sequence[str],
    sft: SFTConfig,
    extra_steps: int,
    log: Callable[[str], None] | None = None,
    from_step: int | None = None,
) -> SFTResult:
    """A further budget for a trained seed: `extra_steps` more steps on the same data, no early stopping, at the
    learning rate its schedule had at `from_step`; by default the rate the schedule ended with (the plateau check:
    a converged seed barely moves)."""
    rng = np.random.default_rng(sft.seed + 1)  # a new pass over the data, not a replay of the first
    train, val = sft_data(processor, seed_train, kinds, sft, rng)
    at = sft.max_steps if from_step is None else from_step
    further = sft.model_copy(
        update={
            "lr": sft.lr * warmup_cosine(at, sft.max_steps, sft.warmup_steps, sft.min_lr_ratio),
            "min_lr_ratio": 1.0,
            "warmup_steps": 0,
            "max_steps": extra_steps,
            "patience": extra_steps,  # never stop early
            "min_improvement": -math.inf,  # keep the last weights, not the best
            "seed": sft.seed + 1,
        }
    )
    model.train()
    return train_sft(model, processor, train, val, further, log)


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
    train, val = sft_data(processor, seed_train, kinds, sft, rng)
    if log:
        log(
            f"seed SFT: {len(train)} examples, {sum(p is None for p in train.pixel_values)} without image; "
            f"{sum(p.numel() for p in model.parameters()):,} parameters"
        )
    result: SFTResult = train_sft(model, processor, train, val, sft, log)
    return model, processor, result


class SeedTrainingError(RuntimeError):
    """The bootstrap seed did not become a model a round can start from."""


def learn_yes_no(
    model,
    processor,
    seed_train: pl.DataFrame,
    kinds: Sequence[str],
    sft: SFTConfig,
    log: Callable[[str], None] | None = None,
    stopped_at: int | None = None,
) -> tuple[YesNoSkill, int]:
    """The seed's yes/no skill on the held-back images; below `min_yes_no_accuracy`, up to `yes_no_rounds` further
    rounds of training with twice the questions per image, whose 'no' questions name absent objects the way POPE
    picks them (a world whose captions often name an absent partner teaches a seed to say 'yes' to the partner,
    which random absent objects seldom ask about). The early stop watches caption loss alone and may have
    kept the weights of an early step (`stopped_at`): training then resumes at the learning rate the schedule had
    there, not at its final tenth, which moves an under-trained seed too slowly. Returns (skill, further steps);
    raises when the seed still answers at chance."""
    held_back = seed_train.head(sft.val_size)
    skill = yes_no_skill(model, processor, held_back, kinds)
    further = 0
    for attempt in range(sft.yes_no_rounds):
        if skill.accuracy >= sft.min_yes_no_accuracy:
            break
        if log:
            log(f"seed yes/no {skill}: below {sft.min_yes_no_accuracy}, training {sft.yes_no_steps} steps more")
        more_questions = sft.model_copy(
            update={"qa_share": max(1.0, 2 * sft.qa_share), "qa_negatives": "pope", "seed": sft.seed + attempt}
        )
        at = None if stopped_at is None else stopped_at + further
        continue_training(model, processor, seed_train, kinds, more_questions, sft.yes_no_steps, log, at)
        further += sft.yes_no_steps
        skill = yes_no_skill(model, processor, held_back, kinds)
    if log:
        log(f"seed yes/no on the held-back images: {skill}")
    if skill.accuracy < sft.min_yes_no_accuracy:
        raise SeedTrainingError(
            f"the bootstrap seed answers yes/no questions about held-back images at {skill} after {further} "
            f"further steps, below min_yes_no_accuracy={sft.min_yes_no_accuracy}: the promotion gate's POPE would "
            "measure nothing. Give it more steps (max_steps, yes_no_rounds), more questions (qa_share) or a larger "
            "model; min_yes_no_accuracy: 0 skips the check"
        )
    return skill, further


def save_seed_model(
    seed_train: pl.DataFrame,
    model_spec: TinyVLMSpec,
    sft: SFTConfig,
    directory: Path,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Trains the bootstrap seed on the world's `seed_train` split and saves it (safetensors + processor) in
    `directory`; returns what a person reads about the training."""
    kinds, colours = world_vocabulary(seed_train)
    model, processor, result = train_seed_model(seed_train, kinds, colours, model_spec, sft, log)
    skill, further = learn_yes_no(model, processor, seed_train, kinds, sft, log, result.best_step)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "train_seconds": result.seconds,
        "curve": result.curve,
        "yes_no_further_steps": further,
        **skill.as_dict(),
    }
