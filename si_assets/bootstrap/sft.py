"""Supervised training of the bootstrap seed: captions and yes/no questions, with image dropout.

Image dropout matters for the whole method: the controlled-hallucination decoder mixes the model's
image-conditioned distribution with its image-free one, and the image-free path is only a language
prior over captions if the model has been trained to caption without an image.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import torch
from PIL import Image
from pydantic import Field

from si_assets.bootstrap.schedule import warmup_cosine
from si_assets.evaluation.metrics import POPE_STRATEGIES, AbsentObjects
from si_assets.modeling.chat import user_prompt
from si_assets.progress import progress
from si_assets.settings import Settings
from si_assets.world import CAPTION_PROMPTS, decode_png

QA_TEMPLATE = "Is there a {kind} in the image?"


class SFTConfig(Settings):
    seed: int = Field(0, ge=0)
    vision_pretrain_steps: int = Field(1200, ge=0, description="stage 1: object classification for the vision tower")
    max_steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(
        1e-3, gt=0
    )  # 3e-3 (the 0.7M seed's) stopped a 2.6M seed early and worse (docs/results.md, "Seed capacity")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    image_dropout: float = Field(0.25, ge=0.0, lt=1.0, description="share of caption examples given without image")
    qa_share: float = Field(0.5, ge=0.0, description="yes/no questions per image, on average")
    qa_negatives: Literal["random", "pope"] = Field(
        "random",
        description="the absent object a 'no' question names: drawn at random, or by one of POPE's strategies "
        "(random, most frequent, most co-occurring with the image's objects) in equal shares",
    )
    val_size: int = Field(200, ge=1)
    eval_every: int = Field(100, ge=1)
    # Evaluations without gain before stopping. The validation loss is a full pass over fixed examples, not a noisy
    # minibatch: the default seed's improves up to step 900 and rises from 1,000 on, so stopping at the first rise
    # keeps the weights patience 5 kept (step 900) 400 steps sooner (docs/results.md, "Seed convergence and early
    # stopping").
    patience: int = Field(1, ge=1)
    min_improvement: float = Field(0.0, ge=-1, le=1, description="validation-loss drop that counts as a gain")
    # The early stop watches caption loss: a seed can stop before it has learned to answer yes/no from the image.
    # Measured with POPE's three strategies on the 200 held-back images (1,200 questions): the default world's seed
    # answers 0.802 or 0.751, depending on the CPU that trained it; seeds of other worlds (bench/worlds.py) have
    # answered 0.50 (all "yes" or all "no") and 0.733 before further training.
    min_yes_no_accuracy: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="accuracy on POPE's balanced yes/no questions about the held-back images the seed must reach "
        "(chance is 0.5); 0 skips the check",
    )
    yes_no_rounds: int = Field(3, ge=0, description="further training rounds while the seed is below that accuracy")
    yes_no_steps: int = Field(300, ge=1, description="steps per further round, with twice the questions per image")


@dataclass
class SFTExample:
    image: Image.Image | None
    prompt: str
    response: str


@dataclass
class EncodedExamples:
    """Token ids per example (prompt + response), how many of them are prompt, and pixels per image example."""

    input_ids: list[torch.Tensor]
    prompt_lengths: list[int]
    pixel_values: list[torch.Tensor | None]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EarlyStopping:
    """Best-so-far tracking on a validation loss: an evaluation improves when it beats the best by more than
    `min_improvement`; training stops after `patience` evaluations in a row that did not."""

    patience: int
    min_improvement: float = Field(0.0, ge=-1, le=1, description="validation-loss drop that counts as a gain")
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0

    def update(self, step: int, loss: float) -> bool:
        """Record an evaluation; True when it is the new best."""
        if loss < self.best_loss - self.min_improvement:
            self.best_loss, self.best_step, self.bad_evals = loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience


@dataclass
class SFTResult:
    steps: int
    best_step: int
    best_val_loss: float
    seconds: float
    curve: list[dict] = field(default_factory=list)


def build_examples(
    split: pl.DataFrame, kinds: Sequence[str], config: SFTConfig, rng: np.random.Generator
) -> list[SFTExample]:
    """One caption example per image (some without the image), plus balanced yes/no questions."""
    examples: list[SFTExample] = []
    absent_objects = AbsentObjects(split["objects"].to_list(), kinds)
    for row in split.iter_rows(named=True):
        image = decode_png(row["image_png"])
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        with_image = rng.random() >= config.image_dropout
        examples.append(SFTExample(image if with_image else None, prompt, row["caption"]))
        n_questions = int(rng.poisson(config.qa_share))
        present = list(row["objects"])
        absent = [k for k in kinds if k not in present]
        for _ in range(n_questions):
            ask_present = rng.random() < 0.5 or not absent
            if ask_present:
                kind = present[int(rng.integers(len(present)))]
            elif config.qa_negatives == "random":
                kind = absent[int(rng.integers(len(absent)))]
            else:
                strategy = POPE_STRATEGIES[int(rng.integers(len(POPE_STRATEGIES)))]
                kind = absent_objects.pick(strategy, present, absent, 1, rng)[0]
            examples.append(SFTExample(image, QA_TEMPLATE.format(kind=kind), "yes." if ask_present else "no."))
    return examples


def encode_examples(processor, examples: Sequence[SFTExample], chunk: int = 256) -> EncodedExamples:
    """Prompts go through the processor (chat template, image-token expansion, pixels); the response is
    appended as ids so the prompt/response boundary is exact."""
    tok = processor.tokenizer
    input_ids: list[torch.Tensor] = []
    prompt_lengths: list[int] = []
    pixels: list[torch.Tensor | None] = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        texts = [user_prompt(processor, ex.prompt, with_image=ex.image is not None) for ex in part]
        images = [ex.image for ex in part if ex.image is not None]
        enc = processor(text=texts, images=images or None, padding=False)
        responses = tok([" " + ex.response + tok.eos_token for ex in part], add_special_tokens=False)["input_ids"]
        image_pixels = iter(enc["pixel_values"]) if images else iter(())
        for ex, prompt_ids, response_ids in zip(part, enc["input_ids"], responses):
            input_ids.append(torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long))
            prompt_lengths.append(len(prompt_ids))
            pixels.append(torch.as_tensor(np.asarray(next(image_pixels))) if ex.image is not None else None)
    return EncodedExamples(input_ids, prompt_lengths, pixels)


def collate(data: EncodedExamples, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (training, not generation) with the loss on response tokens only."""
    length = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), length), -100, dtype=torch.long)
    mask = torch.zeros((len(indices), length), dtype=torch.long)
    for row, i in enumerate(indices):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        labels[row, data.prompt_lengths[i] : len(seq)] = seq[data.prompt_lengths[i] :]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    # Image features are matched to image tokens in batch order, so pixels follow the same order.
    pix = [data.pixel_values[i] for i in indices if data.pixel_values[i] is not None]
    if pix:
        batch["pixel_values"] = torch.stack(pix)
    return batch


@torch.no_grad()
def mean_loss(model, data: EncodedExamples, pad_id: int, batch_size: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        idx = list(range(start, min(start + batch_size, len(data))))
        batch = collate(data, idx, pad_id)
        n_tokens = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n_tokens
        count += n_tokens
    model.train()
    return total / max(1, count)


def train_sft(
    model,
    processor,
    train: EncodedExamples,
    val: EncodedExamples,
    config: SFTConfig,
    log: Callable[[str], None] | None = None,
) -> SFTResult:
    """AdamW with warm-up and cosine decay; early stopping on validation caption loss, best weights kept."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pad_id = processor.tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    stopping, best_state = EarlyStopping(config.patience, config.min_improvement), None
    curve: list[dict] = []
    started = time.perf_counter()
    order = rng.permutation(len(train))
    cursor, running = 0, 0.0
    step = 0
    with progress(config.max_steps, "seed SFT", log) as bar:
        for step in range(1, config.max_steps + 1):
            if cursor + config.batch_size > len(order):
                order, cursor = rng.permutation(len(train)), 0
            idx = order[cursor : cursor + config.batch_size].tolist()
            cursor += config.batch_size
            for group in optimizer.param_groups:
                group["lr"] = config.lr * warmup_cosine(
                    step - 1, config.max_steps, config.warmup_steps, config.min_lr_ratio
                )
            loss = model(**collate(train, idx, pad_id)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running += loss.item()
            bar.update(1)
            if step % config.eval_every == 0:
                val_loss = mean_loss(model, val, pad_id)
                curve.append({"step": step, "train_loss": running / config.eval_every, "val_loss": val_loss})
                running = 0.0
                bar.set_postfix(val_loss=f"{val_loss:.4f}", refresh=False)
                if stopping.update(step, val_loss):
                    best_state = copy.deepcopy(model.state_dict())
                elif stopping.should_stop:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return SFTResult(step, stopping.best_step, stopping.best_loss, time.perf_counter() - started, curve)
