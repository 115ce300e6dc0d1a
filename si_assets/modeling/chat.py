"""Prompts built with the processor's own chat template, never a hand-written string per architecture."""

from __future__ import annotations


def user_prompt(processor, text: str, with_image: bool = True) -> str:
    """The generation prompt for one user turn, with or without the image part."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
