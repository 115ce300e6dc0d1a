"""Batched greedy generation through any HF image-text-to-text model and its processor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from si_assets.modeling.chat import user_prompt
from si_assets.progress import progress


@torch.no_grad()
def generate_greedy(
    model,
    processor,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
    desc: str = "generate",
) -> list[str]:
    """One response per (image, prompt); left padding (set by the processor) keeps the batch aligned."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    with progress(len(images), desc, log) as bar:
        for start in range(0, len(images), batch_size):
            texts = [user_prompt(processor, p) for p in prompts[start : start + batch_size]]
            enc = processor(
                images=list(images[start : start + batch_size]), text=texts, return_tensors="pt", padding=True
            ).to(device)
            generated = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
            new_tokens = generated[:, enc["input_ids"].shape[1] :]
            out.extend(t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True))
            bar.update(len(texts))
    return out


@torch.no_grad()
def continue_without_image(
    model,
    processor,
    prompts: Sequence[str],
    prefixes: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """The image-free stream's greedy continuation of each response prefix: what the language prior alone says
    next after (prompt, prefix). Prefixes should not end in whitespace (tokenizers attach it to the next word)."""
    if len(prompts) != len(prefixes):
        raise ValueError(f"{len(prompts)} prompts but {len(prefixes)} prefixes")
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    with progress(len(prompts), "prior continuations", log) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = zip(prompts[start : start + batch_size], prefixes[start : start + batch_size])
            texts = [user_prompt(processor, p, with_image=False) + prefix for p, prefix in chunk]
            enc = processor(text=texts, return_tensors="pt", padding=True).to(device)
            generated = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
            )
            out.extend(processor.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
            bar.update(len(texts))
    return out
