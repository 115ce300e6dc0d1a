"""Checking every image and prompt before it reaches a model (Dagster-free).

Each problem has a reason code; a rejected input is recorded with its reason and the rest go on. Images that
can be converted without changing what they show are converted (CMYK, grey, alpha or transparent palettes
composited on white); those that cannot are rejected (16-bit and float pixels, whose naive conversion to 8 bits
wipes out the picture).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from si_assets.settings import Settings


class Reason(StrEnum):
    MISSING_FILE = "missing_file"
    ZERO_BYTES = "zero_bytes"
    TRUNCATED = "truncated"
    NOT_AN_IMAGE = "not_an_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNSUPPORTED_MODE = "unsupported_mode"
    TOO_SMALL = "too_small"
    MULTI_FRAME = "multi_frame"
    EMPTY_PROMPT = "empty_prompt"
    PROMPT_TOO_LONG = "prompt_too_long"
    DUPLICATE = "duplicate"
    OUTSIDE_ROOT = "outside_root"


REASON_HELP = {
    Reason.MISSING_FILE: "the path does not exist",
    Reason.ZERO_BYTES: "the file is empty",
    Reason.TRUNCATED: "the image data ends early (an interrupted download or copy)",
    Reason.NOT_AN_IMAGE: "the bytes are no image format Pillow reads, whatever the extension says",
    Reason.TOO_MANY_PIXELS: "more pixels than `max_pixels` (decompression-bomb guard)",
    Reason.UNSUPPORTED_MODE: "16-bit, 32-bit or float pixels: convert to 8-bit RGB first",
    Reason.TOO_SMALL: "a side shorter than `min_side` pixels",
    Reason.MULTI_FRAME: "an animation or multi-page file: extract the frame you mean",
    Reason.EMPTY_PROMPT: "the prompt is empty or only whitespace",
    Reason.PROMPT_TOO_LONG: "the prompt has more tokens than `max_prompt_tokens`",
    Reason.DUPLICATE: "the same bytes as an earlier image of the pool",
    Reason.OUTSIDE_ROOT: "the path leaves the configured image root",
}

# Modes whose conversion to RGB keeps the picture; the rest (I;16, I, F, ...) are rejected.
_CONVERTIBLE = {"RGB", "L", "LA", "RGBA", "P", "PA", "CMYK", "YCbCr", "1", "RGBX", "La"}


class InputLimits(Settings):
    """What every image and prompt is checked against before it reaches a model."""

    # a 6,300-pixel square; Pillow's own bomb guard stops at 89 M (warns) / 179 M
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are rejected unread")
    min_side: int = Field(8, ge=1, description="raised to the processor's patch size")
    max_prompt_tokens: int = Field(256, ge=1)


class Rejected(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason, self.detail = reason, detail


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths, `..` and symlinks that lead out of `root`."""
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise Rejected(Reason.OUTSIDE_ROOT, f"{relative} resolves to {candidate}, outside {root}")
    return candidate


def read_file(path: Path) -> bytes:
    if not path.is_file():
        raise Rejected(Reason.MISSING_FILE, str(path))
    data = path.read_bytes()
    if not data:
        raise Rejected(Reason.ZERO_BYTES, str(path))
    return data


def decode_image(data: bytes, limits: InputLimits) -> np.ndarray:
    """8-bit RGB pixels of a single-frame image, or `Rejected` with the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise Rejected(Reason.NOT_AN_IMAGE, str(exc)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(Reason.TOO_MANY_PIXELS, str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:  # a known format whose header already ends early
        raise Rejected(Reason.TRUNCATED, f"{type(exc).__name__}: {exc}") from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:  # checked from the header, before decoding any pixel
            raise Rejected(Reason.TOO_MANY_PIXELS, f"{width}x{height} > {limits.max_pixels} pixels")
        if getattr(image, "n_frames", 1) > 1:
            raise Rejected(Reason.MULTI_FRAME, f"{image.n_frames} frames")
        if image.mode not in _CONVERTIBLE:
            raise Rejected(Reason.UNSUPPORTED_MODE, f"mode {image.mode}")
        if min(width, height) < limits.min_side:
            raise Rejected(Reason.TOO_SMALL, f"{width}x{height}, min side {limits.min_side}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise Rejected(Reason.TRUNCATED, f"{type(exc).__name__}: {exc}") from None
        return np.asarray(to_rgb(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as a viewer shows it: transparency composited on white."""
    if image.mode == "P" and "transparency" in image.info or image.mode in {"PA", "LA", "La", "RGBA"}:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def check_prompt(prompt: str | None, count_tokens: Callable[[str], int] | None, limits: InputLimits) -> str:
    if prompt is None or not prompt.strip():
        raise Rejected(Reason.EMPTY_PROMPT, repr(prompt))
    if count_tokens is not None:
        tokens = count_tokens(prompt)
        if tokens > limits.max_prompt_tokens:
            raise Rejected(Reason.PROMPT_TOO_LONG, f"{tokens} tokens > {limits.max_prompt_tokens}")
    return prompt
