"""A round's image pool from the embedded world, a folder or a manifest, validated (Dagster-free).

Images are copied into the round's artifact (normalised to 8-bit RGB PNG), so a round stays reproducible after
the folder changes. Every input that cannot be used lands in a rejects table with a reason code
(`si_assets.collection.validation.Reason`); the rest go on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from PIL import Image
from pydantic import Field, model_validator

from si_assets.collection.sampling import stable_seed
from si_assets.collection.validation import (
    InputLimits,
    Reason,
    Rejected,
    check_prompt,
    decode_image,
    read_file,
    resolve_inside,
)
from si_assets.world import CAPTION_PROMPTS, decode_png, encode_png

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_READERS = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".jsonl": pl.read_ndjson}
POOL_SCHEMA = {"id": pl.String, "image_sha256": pl.String, "prompt": pl.String, "image_png": pl.Binary}
REJECTS_SCHEMA = {"path": pl.String, "reason": pl.String, "detail": pl.String}
DEFAULT_LIMITS = InputLimits()


class ImagePoolSettings(InputLimits):
    """Where the round's images come from, and the limits every image and prompt is checked against."""

    source: Literal["world", "folder", "manifest"] = "world"
    folder: str | None = Field(None, description="the image root: all images under it, or the manifest's paths")
    manifest: str | None = Field(None, description="Parquet / CSV / JSONL with `path` (under `folder`), `prompt`")
    prompts: list[str] = Field(default_factory=lambda: list(CAPTION_PROMPTS), description="for images without one")
    max_reject_rate: float = Field(0.1, ge=0, le=1, description="the blocking check fails above this share")

    @model_validator(mode="after")
    def _source_complete(self) -> ImagePoolSettings:
        if self.source != "world" and not self.folder:
            raise ValueError(f"source {self.source!r} needs `folder`, the image root")
        if self.source == "manifest" and not self.manifest:
            raise ValueError("source 'manifest' needs `manifest`, the table of image paths")
        return self


@dataclass(frozen=True)
class PoolEntry:
    path: str  # relative to the pool's root (or the world's image id)
    prompt: str | None = None  # None: drawn from the default prompts


@dataclass(frozen=True)
class ImagePool:
    images: pl.DataFrame  # id, image_sha256, prompt, image_png, source
    rejects: pl.DataFrame  # path, reason, detail

    @property
    def reject_rate(self) -> float:
        seen = self.images.height + self.rejects.height
        return self.rejects.height / seen if seen else 0.0

    def reject_counts(self) -> dict[str, int]:
        return dict(self.rejects.group_by("reason").len().sort("reason").iter_rows())


def image_files(folder: str | Path) -> dict[str, int]:
    """Image files under `folder` (recursively) as relative path -> size: cheap enough for a sensor tick."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} does not exist")
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def folder_entries(folder: str | Path) -> list[PoolEntry]:
    return [PoolEntry(path) for path in image_files(folder)]


def manifest_entries(manifest: str | Path) -> list[PoolEntry]:
    """A Parquet, CSV or JSONL table with a `path` column (relative to the image root) and optionally `prompt`."""
    path = Path(manifest)
    reader = MANIFEST_READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"manifest {path}: use one of {sorted(MANIFEST_READERS)}")
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    table = reader(path)
    if "path" not in table.columns:
        raise ValueError(f"manifest {path} has no `path` column (columns: {table.columns})")
    prompts = table["prompt"].cast(pl.String) if "prompt" in table.columns else [None] * table.height
    return [PoolEntry(str(p), q) for p, q in zip(table["path"].cast(pl.String), prompts)]


def pool_entries(settings: ImagePoolSettings) -> list[PoolEntry]:
    """The entries a folder or manifest source names."""
    return manifest_entries(settings.manifest) if settings.source == "manifest" else folder_entries(settings.folder)


def decode_images(images: pl.DataFrame) -> dict[str, Image.Image]:
    """A pool's images by id (stored as PNG bytes)."""
    return {i: decode_png(b) for i, b in zip(images["id"], images["image_png"])}


def build_pool(
    entries: Iterable[PoolEntry],
    root: str | Path,
    prompts: list[str],
    limits: InputLimits = DEFAULT_LIMITS,
    count_tokens: Callable[[str], int] | None = None,
    seed: int = 0,
) -> ImagePool:
    """Every usable, distinct image of `entries` (files under `root`); an entry without a prompt gets one of
    `prompts`, chosen by content hash so the same image gets the same prompt in every round."""
    root = Path(root)

    def files() -> Iterator[tuple[str, bytes | Rejected, str | None]]:
        for entry in entries:
            try:
                yield entry.path, read_file(resolve_inside(root, entry.path)), entry.prompt
            except Rejected as rejected:
                yield entry.path, rejected, entry.prompt

    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    return admit(files(), prompts, limits, count_tokens, seed, source=str(root))


def world_pool(
    world_improve: pl.DataFrame,
    limits: InputLimits = DEFAULT_LIMITS,
    count_tokens: Callable[[str], int] | None = None,
) -> ImagePool:
    """The embedded world's `improve` split through the same checks (its prompts are its own)."""
    rows = zip(world_improve["id"], world_improve["image_png"], world_improve["prompt"])
    return admit(rows, None, limits, count_tokens, 0, source="world:improve")


def admit(
    inputs: Iterable[tuple[str, bytes | Rejected, str | None]],
    prompts: list[str] | None,
    limits: InputLimits,
    count_tokens: Callable[[str], int] | None,
    seed: int,
    source: str,
) -> ImagePool:
    """Checks (name, file bytes or the reason they could not be read, prompt) in order; `prompts` fill in
    missing prompts (None: every input must bring its own)."""
    rows, rejects, first_of = [], [], {}
    for name, data, prompt in inputs:
        try:
            if isinstance(data, Rejected):
                raise data
            digest = hashlib.sha256(data).hexdigest()
            if digest in first_of:
                raise Rejected(Reason.DUPLICATE, f"same bytes as {first_of[digest]}")
            pixels = decode_image(data, limits)
            if prompt is None and prompts:
                prompt = prompts[stable_seed(seed, digest) % len(prompts)]
            chosen = check_prompt(prompt, count_tokens, limits)
        except Rejected as rejected:
            rejects.append({"path": name, "reason": str(rejected.reason), "detail": rejected.detail})
            continue
        first_of[digest] = name
        rows.append(
            {"id": name, "image_sha256": digest, "prompt": chosen, "image_png": encode_png(pixels), "source": source}
        )
    images = pl.DataFrame(rows, schema={**POOL_SCHEMA, "source": pl.String})
    return ImagePool(images, pl.DataFrame(rejects, schema=REJECTS_SCHEMA))
