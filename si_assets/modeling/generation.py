"""Batched greedy generation through any HF image-text-to-text model and its processor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from si_assets.modeling.chat import encode, user_prompt
from si_assets.progress import progress


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

    def batch_inputs(batch: slice):
        return encode(processor, [user_prompt(processor, p) for p in prompts[batch]], [[i] for i in images[batch]])

    texts = _greedy_batches(model, processor, len(prompts), batch_inputs, max_new_tokens, batch_size, log, desc)
    return [t.strip() for t in texts]


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

    def batch_inputs(batch: slice):
        texts = [user_prompt(processor, p, with_image=False) + x for p, x in zip(prompts[batch], prefixes[batch])]
        return encode(processor, texts, [[] for _ in texts])

    return _greedy_batches(
        model, processor, len(prompts), batch_inputs, max_new_tokens, batch_size, log, "prior continuations"
    )


@torch.no_grad()
def _greedy_batches(
    model,
    processor,
    count: int,
    batch_inputs: Callable[[slice], dict],
    max_new_tokens: int,
    batch_size: int,
    log: Callable[[str], None] | None,
    desc: str,
) -> list[str]:
    """The new text of greedy `generate` over `count` inputs; `batch_inputs(batch)` gives a batch's model inputs."""
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    with progress(count, desc, log) as bar:
        for start in range(0, count, batch_size):
            batch = slice(start, min(start + batch_size, count))
            enc = batch_inputs(batch).to(device)
            generated = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
            )
            out.extend(processor.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
            bar.update(batch.stop - batch.start)
    return out
