"""The user's own images as a round's pool: a folder snapshot, deduplicated by content (Dagster-free).

The pool is copied into the round's artifact (normalised to RGB PNG), so a round stays reproducible after
the folder changes. Files that cannot be used land in a rejects table with a reason; the rest go on.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from si_assets.collection.sampling import stable_seed
from si_assets.world import encode_png

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
UNREADABLE, DUPLICATE = "unreadable", "duplicate"
REJECTS_SCHEMA = {"path": pl.String, "reason": pl.String, "detail": pl.String}


@dataclass(frozen=True)
class ImagePool:
    images: pl.DataFrame  # id, image_sha256, prompt, image_png, source
    rejects: pl.DataFrame  # path, reason, detail

    @property
    def reject_rate(self) -> float:
        seen = self.images.height + self.rejects.height
        return self.rejects.height / seen if seen else 0.0


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


def load_image_folder(folder: str | Path, prompts: list[str], seed: int = 0) -> ImagePool:
    """Every readable, distinct image under `folder`; its prompt is drawn from `prompts` by content hash,
    so the same image gets the same prompt in every round."""
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    root = Path(folder)
    rows, rejects, first_path_of = [], [], {}
    for rel in image_files(root):
        data = (root / rel).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in first_path_of:
            rejects.append({"path": rel, "reason": DUPLICATE, "detail": f"same bytes as {first_path_of[digest]}"})
            continue
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                pixels = np.asarray(img.convert("RGB"))
        except Exception as exc:  # PIL raises many types for broken files; all mean "not usable"
            rejects.append({"path": rel, "reason": UNREADABLE, "detail": f"{type(exc).__name__}: {exc}"})
            continue
        first_path_of[digest] = rel
        prompt = prompts[stable_seed(seed, digest) % len(prompts)]
        rows.append(
            {"id": rel, "image_sha256": digest, "prompt": prompt, "image_png": encode_png(pixels), "source": str(root)}
        )
    schema = {"id": pl.String, "image_sha256": pl.String, "prompt": pl.String, "image_png": pl.Binary}
    images = pl.DataFrame(rows, schema={**schema, "source": pl.String})
    return ImagePool(images, pl.DataFrame(rejects, schema=REJECTS_SCHEMA))
