"""The embedded procedural image world (Dagster-free): exact ground truth, co-occurrence priors."""

from si_assets.world.generate import (
    CAPTION_PROMPTS,
    EVAL_PROMPT,
    EVAL_SPLITS,
    LABELED_SPLITS,
    SPLIT_NAMES,
    caption_for,
    caption_text,
    generate_split,
    generate_world,
    hard_negative_caption,
    improve_ground_truth,
    improve_true_captions,
    sample_scene,
)
from si_assets.world.render import PlacedObject, decode_png, draw_mask, encode_png, render_image
from si_assets.world.spec import WorldSpec

__all__ = [
    "CAPTION_PROMPTS",
    "EVAL_PROMPT",
    "EVAL_SPLITS",
    "LABELED_SPLITS",
    "SPLIT_NAMES",
    "PlacedObject",
    "WorldSpec",
    "caption_for",
    "caption_text",
    "decode_png",
    "draw_mask",
    "encode_png",
    "generate_split",
    "generate_world",
    "improve_ground_truth",
    "improve_true_captions",
    "hard_negative_caption",
    "render_image",
    "sample_scene",
]
