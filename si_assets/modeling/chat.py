"""Prompts built with the processor's own chat template, never a hand-written string per architecture."""

from __future__ import annotations


def user_prompt(processor, text: str, with_image: bool = True) -> str:
    """The generation prompt for one user turn, with or without the image part."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
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
