"""Prompts built with the processor's own chat template, never a hand-written string per architecture, and encoded
with their images one list per prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import torch
from PIL import Image


class ImageRowError(ValueError):
    """An encoded row is not the prompt asked for: image tokens missing or misplaced, or an image-free prompt
    rewritten because it shares a batch with image prompts."""


def user_prompt(processor, text: str, with_image: bool = True) -> str:
    """The generation prompt for one user turn, with or without the image part."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def image_token_ids(processor) -> list[int]:
    """The ids that stand for image content in an encoded prompt. Gemma3's prompt marker (begin-of-image) differs
    from the soft tokens the image becomes, so the processor's own list is asked first."""
    ids = [int(i) for i in getattr(processor, "image_token_ids", None) or [] if i is not None]
    if ids:
        return ids
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token_id = processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    return [int(token_id)]


def encode(processor, texts: Sequence[str], images: Sequence[Sequence[Image.Image]]):
    """The processor's batch for `texts[i]` with the images `images[i]` (an empty list: an image-free prompt), left
    padded. Images go one list per prompt: Gemma3's and SmolVLM's processors read a flat list as one prompt's
    images, and every tested processor takes the nested form. Fails with `ImageRowError` when a row is not what was
    asked for (see `check_rows`)."""
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} prompts but {len(images)} image lists")
    nested = [list(i) for i in images]
    enc = processor(text=list(texts), images=nested if any(nested) else None, return_tensors="pt", padding=True)
    check_rows(processor, enc, texts, [bool(i) for i in nested])
    return enc


def check_rows(processor, enc, texts: Sequence[str], with_image: Sequence[bool]) -> None:
    """Every row meant to carry an image has image tokens, every image-free row has none, and beside image rows an
    image-free row is the prompt as the processor encodes it alone (PaliGemma's processor splices <bos> into an
    image-free prompt that shares a batch with image prompts)."""
    has_tokens = torch.isin(enc["input_ids"], torch.tensor(image_token_ids(processor))).any(dim=1).tolist()
    for row, wanted in enumerate(with_image):
        if wanted != has_tokens[row]:
            found = "an image but no image tokens" if wanted else "no image but image tokens"
            _wrong_row(processor, enc, row, f"it has {found}")
    free = [row for row, wanted in enumerate(with_image) if not wanted]
    if not free or len(free) == len(texts):
        return
    try:
        alone = processor(text=[texts[row] for row in free], return_tensors="pt", padding=True)
    except Exception as exc:  # noqa: BLE001 - whatever the processor raises, the prompt has no image-free encoding
        raise ImageRowError(f"{type(processor).__name__} cannot encode a prompt without an image ({exc})") from exc
    for k, row in enumerate(free):
        if not torch.equal(_unpadded(enc, row), _unpadded(alone, k)):
            shown = processor.tokenizer.decode(_unpadded(alone, k))[:120]
            _wrong_row(processor, enc, row, f"is rewritten beside image prompts (alone it encodes as {shown!r})")


def _unpadded(enc, row: int) -> torch.Tensor:
    return enc["input_ids"][row][enc["attention_mask"][row].bool()]


def _wrong_row(processor, enc, row: int, problem: str) -> NoReturn:
    rows = len(enc["input_ids"])
    encoded = processor.tokenizer.decode(_unpadded(enc, row))[:160]
    raise ImageRowError(
        f"{type(processor).__name__} encoded prompt {row} of {rows} wrongly: {problem}; encoded: {encoded!r}"
    )


def prompt_token_counter(processor):
    """Tokens of a prompt's text as the model's tokenizer counts them (no chat template, no image tokens)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def patch_size(processor) -> int:
    """The vision encoder's patch side, the smallest image side worth sending; 1 when the processor does not say."""
    for owner in (processor, getattr(processor, "image_processor", None)):
        size = getattr(owner, "patch_size", None)
        if isinstance(size, dict):
            size = max(size.values())
        if isinstance(size, int) and size > 0:
            return size
    return 1
