"""Checking every file, image and prompt before it reaches a model (Dagster-free).

Each problem has a reason code; a rejected input is recorded with its reason and the rest go on. Images that
can be converted without changing what they show are converted (EXIF orientation applied; CMYK, grey, alpha or
transparent palettes composited on white); those that cannot are rejected (16-bit and float pixels, whose naive
conversion to 8 bits wipes out the picture).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field

from si_assets.settings import Settings


class Reason(StrEnum):
    MISSING_FILE = "missing_file"
    BROKEN_LINK = "broken_link"
    UNREADABLE = "unreadable"
    NOT_A_FILE = "not_a_file"
    UNSUPPORTED_FORMAT = "unsupported_format"
    SYSTEM_FILE = "system_file"
    IN_FLIGHT = "in_flight"
    TOO_LARGE = "too_large"
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
    Reason.MISSING_FILE: "the path does not exist (a manifest's path, or a file removed after the folder was listed)",
    Reason.BROKEN_LINK: "a symbolic link to nothing, or a loop of links",
    Reason.UNREADABLE: "the file (or a folder above it) cannot be opened or read: permissions, I/O error",
    Reason.NOT_A_FILE: "a FIFO, socket, device, directory or link to a directory where a file was expected",
    Reason.UNSUPPORTED_FORMAT: "a file of the folder whose extension is no image format read here (.heic, .avif, none)",
    Reason.SYSTEM_FILE: "an operating system's metadata file (`._*` AppleDouble, .DS_Store, Thumbs.db, desktop.ini)",
    Reason.IN_FLIGHT: "an upload in progress: a temporary name (.part, .crdownload, .tmp, ...), or changed while read",
    Reason.TOO_LARGE: "more bytes than `max_file_bytes` (read from the file system, before the file is read)",
    Reason.ZERO_BYTES: "the file is empty",
    Reason.TRUNCATED: "the image data ends early (an interrupted download or copy)",
    Reason.NOT_AN_IMAGE: "the bytes are no image format Pillow reads, whatever the extension says",
    Reason.TOO_MANY_PIXELS: "more pixels than `max_pixels` (decompression-bomb guard)",
    Reason.UNSUPPORTED_MODE: "16-bit, 32-bit or float pixels: convert to 8-bit RGB first",
    Reason.TOO_SMALL: "a side shorter than `min_side` pixels",
    Reason.MULTI_FRAME: "an animation or multi-page file: extract the frame you mean",
    Reason.EMPTY_PROMPT: "the prompt is empty or only whitespace",
    Reason.PROMPT_TOO_LONG: "the prompt has more tokens than `max_prompt_tokens`",
    Reason.DUPLICATE: "the same decoded pixels (or the same path) as an earlier image of the pool",
    Reason.OUTSIDE_ROOT: "the path leaves the configured image root",
}

# Rejects that are no failure of the input, so `reject_rate` leaves them out: a duplicate adds nothing the pool lacks,
# and a system file or an upload in flight was never meant as an image of this round (the upload joins a later one).
NOT_COUNTED = frozenset({Reason.DUPLICATE, Reason.SYSTEM_FILE, Reason.IN_FLIGHT})

# Modes whose conversion to RGB keeps the picture; the rest (I;16, I, F, ...) are rejected.
_CONVERTIBLE = {"RGB", "L", "LA", "RGBA", "P", "PA", "CMYK", "YCbCr", "1", "RGBX", "La"}
# O_NONBLOCK: opening a FIFO must not wait for a writer (it is rejected right after, by fstat). Absent on Windows.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_READ_CHUNK = 1 << 20


class InputLimits(Settings):
    """What every file, image and prompt is checked against before it reaches a model."""

    # a 6,300-pixel square; Pillow's own bomb guard stops at 89 M (warns) / 179 M
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are rejected unread")
    min_side: int = Field(8, ge=1, description="raised to the processor's patch size")
    max_prompt_tokens: int = Field(256, ge=1)
    # every admitted file is held in memory while the pool is built; 2 GB bounds what one file may ask for
    max_file_bytes: int = Field(
        50_000_000, ge=1, le=2_000_000_000, description="larger files are rejected from their size, unread"
    )


class Rejected(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason, self.detail = reason, detail


def printable(text: str) -> str:
    """`text` as valid UTF-8: the bytes of a file name that are not UTF-8 (which Python holds as surrogate escapes,
    and which no Parquet or Arrow string can hold) show as `\\xNN`, as `os.fsencode` gives them back."""
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # surrogates that stand for no byte of a name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths, `..` and symlinks that lead out of `root`."""
    try:
        candidate = (root / relative).resolve()
    except (RuntimeError, OSError) as exc:  # a loop of links: RuntimeError up to Python 3.12, OSError after
        raise Rejected(Reason.BROKEN_LINK, f"{relative}: {exc}") from None
    except ValueError as exc:  # an embedded NUL byte, from a manifest
        raise Rejected(Reason.MISSING_FILE, f"{relative!r} is no file name: {exc}") from None
    if not candidate.is_relative_to(root.resolve()):
        raise Rejected(Reason.OUTSIDE_ROOT, f"{relative} resolves to {candidate}, outside {root}")
    return candidate


def read_entry(root: Path, relative: str, max_bytes: int) -> bytes:
    """The bytes of the file `relative` names under `root`, or `Rejected`: outside the root, a broken link, ..."""
    path = resolve_inside(root, relative)
    try:
        return read_file(path, max_bytes)
    except Rejected as rejected:
        if rejected.reason is Reason.MISSING_FILE and os.path.islink(root / relative):
            raise Rejected(Reason.BROKEN_LINK, f"{relative} links to {path}, which does not exist") from None
        raise


def read_file(path: Path, max_bytes: int = InputLimits().max_file_bytes) -> bytes:
    """The bytes of a regular file, its size checked from `fstat` before reading; `Rejected` when it is missing,
    unreadable, no regular file, empty, too large, or when it changed while it was read (an upload in progress)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise Rejected(Reason.MISSING_FILE, f"{path} does not exist") from None
    except PermissionError as exc:
        raise Rejected(Reason.UNREADABLE, f"{path}: {exc.strerror}") from None
    except OSError as exc:
        reason = Reason.BROKEN_LINK if exc.errno == errno.ELOOP else Reason.UNREADABLE
        raise Rejected(reason, f"{path}: {exc.strerror}") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise Rejected(Reason.NOT_A_FILE, f"{path} is a {_kind(before.st_mode)}")
        if before.st_size == 0:
            raise Rejected(Reason.ZERO_BYTES, str(path))
        if before.st_size > max_bytes:
            raise Rejected(Reason.TOO_LARGE, f"{path}: {before.st_size:,} bytes > max_file_bytes {max_bytes:,}")
        data = read_limited(fd, max_bytes + 1)  # one byte more than allowed tells a file that grew past the cap
        after = os.fstat(fd)
    except OSError as exc:  # EIO and the like, while reading
        raise Rejected(Reason.UNREADABLE, f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise Rejected(
            Reason.IN_FLIGHT, f"{path} changed while read: {before.st_size:,} bytes at open, {len(data):,} read"
        )
    return data


def read_limited(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes of an open file, to its end."""
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(_READ_CHUNK, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))
    kinds += ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def decode_image(data: bytes, limits: InputLimits, name: str = "image") -> np.ndarray:
    """8-bit RGB pixels of a single-frame image, turned upright by its EXIF orientation, or `Rejected` with the
    reason. `name` names the file in the reasons. Whatever Pillow raises on these bytes becomes a reason."""
    buffer = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(buffer)
        with image:
            return _checked_pixels(image, limits)
    except Rejected:
        raise
    except UnidentifiedImageError as exc:
        # Pillow names the buffer it was given (`<_io.BytesIO object at 0x...>`); the file's name says more.
        message = str(exc).replace(repr(buffer), f"'{name}'")
        raise Rejected(Reason.NOT_AN_IMAGE, f"{message} (Pillow; it starts with {data[:16]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(Reason.TOO_MANY_PIXELS, str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a known format whose data ends early
        raise Rejected(Reason.TRUNCATED, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # a decoder tripping over hostile bytes (struct.error, IndexError, ...): this file only
        raise Rejected(Reason.NOT_AN_IMAGE, f"Pillow failed on '{name}': {type(exc).__name__}: {exc}") from None


def _checked_pixels(image: Image.Image, limits: InputLimits) -> np.ndarray:
    width, height = image.size
    if width * height > limits.max_pixels:  # checked from the header, before decoding any pixel
        raise Rejected(Reason.TOO_MANY_PIXELS, f"{width}x{height} > {limits.max_pixels} pixels")
    if getattr(image, "n_frames", 1) > 1:
        raise Rejected(Reason.MULTI_FRAME, f"{image.n_frames} frames")
    if image.mode not in _CONVERTIBLE:
        raise Rejected(Reason.UNSUPPORTED_MODE, f"mode {image.mode}")
    if min(width, height) < limits.min_side:  # a quarter turn keeps the shorter side
        raise Rejected(Reason.TOO_SMALL, f"{width}x{height}, min side {limits.min_side}")
    image.load()
    return np.asarray(to_rgb(upright(image)))


def upright(image: Image.Image) -> Image.Image:
    """The image as a viewer shows it: rotated and mirrored by its EXIF orientation. An EXIF block Pillow cannot
    parse leaves the pixels as stored, as viewers do."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: no orientation to apply
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as a viewer shows it: transparency composited on white."""
    if image.mode == "P" and "transparency" in image.info or image.mode in {"PA", "LA", "La", "RGBA"}:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def pixel_digest(pixels: np.ndarray) -> str:
    """A hash of the decoded, upright 8-bit RGB pixels (and their shape): what tells duplicates apart.

    Exact pixels, not a perceptual hash: two files with the same pixels give the model the same input (a re-saved
    PNG, a JPEG with other metadata, a PNG of a JPEG's pixels, an image stored sideways with an orientation tag), and
    exact equality never merges two different images. A perceptual hash would also catch re-encoded or resized
    copies, at the price of a similarity threshold that merges distinct images of simple scenes (the embedded
    world's flat shapes on plain backgrounds)."""
    digest = hashlib.sha256(np.asarray(pixels.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def check_prompt(prompt: str | None, count_tokens: Callable[[str], int] | None, limits: InputLimits) -> str:
    if prompt is None or not prompt.strip():
        raise Rejected(Reason.EMPTY_PROMPT, repr(prompt))
    if count_tokens is not None:
        tokens = count_tokens(prompt)
        if tokens > limits.max_prompt_tokens:
            raise Rejected(Reason.PROMPT_TOO_LONG, f"{tokens} tokens > {limits.max_prompt_tokens}")
    return prompt
