"""A round's image pool from the embedded world, a folder or a manifest, validated (Dagster-free).

Images are copied into the round's artifact (normalised to 8-bit RGB PNG), so a round stays reproducible after
the folder changes. Every input that cannot be used lands in a rejects table with a reason code
(`si_assets.collection.validation.Reason`); the rest go on.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl
from PIL import Image
from pydantic import Field, model_validator

from si_assets.collection.sampling import stable_seed
from si_assets.collection.validation import (
    NOT_COUNTED,
    InputLimits,
    Reason,
    Rejected,
    check_prompt,
    decode_image,
    pixel_digest,
    printable,
    read_entry,
)
from si_assets.world import CAPTION_PROMPTS, decode_png, encode_png

# The formats a folder's files are read in (all decoded by the pinned Pillow); others are `unsupported_format`.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".webp", ".avif", ".bmp", ".gif", ".tif", ".tiff"})
# Names a file has until its upload or download completes (browsers, download managers, WinSCP, editors): renamed
# to its real name when done, so it is left for a later round. rsync's `.name.XXXXXX` is recognised by pattern.
IN_FLIGHT_SUFFIXES = frozenset(
    {".part", ".partial", ".crdownload", ".download", ".opdownload", ".filepart", ".tmp", ".temp"}
)
_RSYNC_TEMP = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9]{6}")
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", ".directory"})  # lower case
MANIFEST_READERS = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".jsonl": pl.read_ndjson}
POOL_SCHEMA = {"id": pl.String, "image_sha256": pl.String, "prompt": pl.String, "image_png": pl.Binary}
REJECTS_SCHEMA = {"path": pl.String, "reason": pl.String, "detail": pl.String}
DEFAULT_LIMITS = InputLimits()
WORLD_SOURCE = "world:improve"


class ImagePoolSettings(InputLimits):
    """Where the round's images come from, and the limits every file, image and prompt is checked against."""

    source: Literal["auto", "world", "folder", "manifest"] = Field(
        "auto", description="auto: manifest when `manifest` is set, else folder when `folder` is set, else world"
    )
    folder: str | None = Field(None, description="the image root: all images under it, or the manifest's paths")
    manifest: str | None = Field(None, description="Parquet / CSV / JSONL with `path` (under `folder`), `prompt`")
    prompts: list[str] = Field(default_factory=lambda: list(CAPTION_PROMPTS), description="for images without one")
    max_reject_rate: float = Field(0.1, ge=0, le=1, description="the blocking check fails above this share")
    images_per_round: int | None = Field(
        None,
        ge=1,
        description="each round reads its own slice of the source: round k the entries (k-1)*n to k*n-1 in the "
        "source's order, wrapping around the end; null: every round reads all of it",
    )

    @model_validator(mode="before")
    @classmethod
    def _source_from_paths(cls, data: Any) -> Any:
        # Resolved here, so `source` is never "auto" once built, and a config that names a folder reads it.
        if isinstance(data, dict) and data.get("source", "auto") == "auto":
            source = "manifest" if data.get("manifest") else "folder" if data.get("folder") else "world"
            data = {**data, "source": source}
        return data

    @model_validator(mode="after")
    def _source_complete(self) -> ImagePoolSettings:
        if self.source == "world" and (self.folder or self.manifest):
            raise ValueError(
                "source 'world' reads the embedded world's images, not `folder` / `manifest`: drop them, or set "
                "source: folder (or manifest)"
            )
        if self.source != "world" and not self.folder:
            raise ValueError(f"source {self.source!r} needs `folder`, the image root")
        if self.source == "manifest" and not self.manifest:
            raise ValueError("source 'manifest' needs `manifest`, the table of image paths")
        if self.source == "folder" and self.manifest:
            raise ValueError("source 'folder' reads every image under `folder`, not `manifest`: set source: manifest")
        return self

    def described(self) -> str:
        """The data the pool is read from, for metadata: the manifest, the folder or the world's split."""
        return {"world": WORLD_SOURCE, "folder": self.folder, "manifest": self.manifest}[self.source]


@dataclass(frozen=True)
class PoolEntry:
    path: str  # relative to the pool's root (or the world's image id), as the file system names it
    prompt: str | None = None  # None: drawn from the default prompts
    rejected: Rejected | None = None  # already known from the folder's listing: never read


@dataclass(frozen=True)
class ImagePool:
    images: pl.DataFrame  # id, image_sha256, prompt, image_png, source
    rejects: pl.DataFrame  # path, reason, detail

    @property
    def failures(self) -> pl.DataFrame:
        """The rejects that count against the pool (`NOT_COUNTED` left out)."""
        return self.rejects.filter(~pl.col("reason").is_in([str(r) for r in NOT_COUNTED]))

    @property
    def reject_rate(self) -> float:
        """Failed inputs over the inputs meant as images: admitted plus failed."""
        failed = self.failures.height
        seen = self.images.height + failed
        return failed / seen if seen else 0.0

    def reject_counts(self) -> dict[str, int]:
        return dict(self.rejects.group_by("reason").len().sort("reason").iter_rows())

    def reject_summary(self, limit: float) -> str:
        """One line for the `reject_rate` check: how many inputs failed and why, and what was not counted."""
        counts = self.reject_counts()
        failed = self.failures.height
        listed = ", ".join(f"{n} {r}" for r, n in counts.items() if Reason(r) not in NOT_COUNTED)
        skipped = ", ".join(f"{n} {r}" for r, n in counts.items() if Reason(r) in NOT_COUNTED)
        line = (
            f"{failed} of {self.images.height + failed} inputs could not be used ({self.reject_rate:.1%}, "
            f"limit {limit:.1%})" + (f": {listed}" if listed else "")
        )
        return line + (f"; not counted: {skipped}" if skipped else "")


def classify_name(name: str) -> Rejected | None:
    """What a folder's file name alone says: None for an image to read, else why it is not read."""
    suffix = Path(name).suffix.lower()
    if name.startswith("._") or name.lower() in SYSTEM_FILES:
        return Rejected(Reason.SYSTEM_FILE, f"{name}: an operating system's metadata file")
    rsync = _RSYNC_TEMP.fullmatch(name)
    if suffix in IN_FLIGHT_SUFFIXES or rsync and Path(rsync["name"]).suffix.lower() in IMAGE_SUFFIXES:
        return Rejected(Reason.IN_FLIGHT, f"{name}: a temporary name; read once the upload renames it")
    if suffix not in IMAGE_SUFFIXES:
        shown = f"extension {suffix}" if suffix else "no extension"
        return Rejected(Reason.UNSUPPORTED_FORMAT, f"{name}: {shown}; read are {' '.join(sorted(IMAGE_SUFFIXES))}")
    return None


def folder_entries(folder: str | Path) -> list[PoolEntry]:
    """Every file under `folder` (recursively, links to folders not followed), sorted by path: the images to read,
    and the rest with the reason they are not read (`classify_name`, a folder that cannot be listed, a link to a
    folder), so that every file of the folder ends up either in the pool or in its rejects."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} does not exist")
    found: list[PoolEntry] = []

    def add(path: str, rejected: Rejected | None) -> None:
        found.append(PoolEntry(Path(path).relative_to(root).as_posix(), rejected=rejected))

    def unlisted(exc: OSError) -> None:
        if Path(exc.filename) == root:
            raise PermissionError(f"image folder {root} cannot be listed: {exc.strerror}") from exc
        detail = f"a folder that cannot be listed ({exc.strerror}): the files in it are not seen"
        add(exc.filename, Rejected(Reason.UNREADABLE, detail))

    for directory, folders, files in os.walk(root, onerror=unlisted):
        for name in folders:  # os.walk does not descend into links to folders: say so
            if os.path.islink(os.path.join(directory, name)):
                detail = "a link to a folder, not followed (it may lead out of the root, or loop)"
                add(os.path.join(directory, name), Rejected(Reason.NOT_A_FILE, detail))
        for name in files:
            add(os.path.join(directory, name), classify_name(name))
    return sorted(found, key=lambda entry: entry.path.split("/"))


def image_files(folder: str | Path) -> dict[str, int]:
    """The files under `folder` that a round would read, as relative path -> size: cheap enough for a sensor tick.
    Files that vanish meanwhile, links to nothing and special files are left out (the round records them)."""
    sizes = {}
    for entry in folder_entries(folder):
        if entry.rejected is None:
            try:
                found = (Path(folder) / entry.path).stat()
            except OSError:
                continue
            if stat.S_ISREG(found.st_mode):
                sizes[printable(entry.path)] = found.st_size
    return sizes


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


T = TypeVar("T")


def round_slice(entries: Sequence[T], images_per_round: int | None, round_number: int) -> list[T]:
    """The entries round `round_number` reads: all of them, or its own `images_per_round` in a row (wrapping
    around the end, so a pool smaller than the rounds need is read again, in the same order)."""
    if images_per_round is None or not entries:
        return list(entries)
    start = (round_number - 1) * images_per_round
    return [entries[(start + i) % len(entries)] for i in range(min(images_per_round, len(entries)))]


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
    `prompts`, chosen by content hash so the same image gets the same prompt in every round. Each entry ends up
    exactly once: in the pool, or in its rejects."""
    root = Path(root)

    def files() -> Iterator[tuple[str, bytes | Rejected, str | None]]:
        for entry in entries:
            data: bytes | Rejected
            if entry.rejected is not None:
                data = entry.rejected
            else:
                try:
                    data = read_entry(root, entry.path, limits.max_file_bytes)
                except Rejected as rejected:
                    data = rejected
            yield entry.path, data, entry.prompt

    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    return admit(files(), prompts, limits, count_tokens, seed, source=printable(str(root)))


def world_pool(
    world_improve: pl.DataFrame,
    limits: InputLimits = DEFAULT_LIMITS,
    count_tokens: Callable[[str], int] | None = None,
) -> ImagePool:
    """The embedded world's `improve` split through the same checks (its prompts are its own)."""
    rows = zip(world_improve["id"], world_improve["image_png"], world_improve["prompt"])
    return admit(rows, None, limits, count_tokens, 0, source=WORLD_SOURCE)


def admit(
    inputs: Iterable[tuple[str, bytes | Rejected, str | None]],
    prompts: list[str] | None,
    limits: InputLimits,
    count_tokens: Callable[[str], int] | None,
    seed: int,
    source: str,
) -> ImagePool:
    """Checks (name, file bytes or the reason they could not be read, prompt) in order; `prompts` fill in
    missing prompts (None: every input must bring its own). Names and details are stored `printable`, so a file
    name that is not UTF-8 never fails the table."""
    rows, rejects, ids = [], [], set()
    first_of: dict[str, str] = {}  # file hash or pixel hash -> the admitted image that had it first
    for name, data, prompt in inputs:
        shown = printable(name)
        try:
            if isinstance(data, Rejected):
                raise data
            if shown in ids:  # a manifest naming a file twice (or two names that print alike): ids stay unique
                raise Rejected(Reason.DUPLICATE, f"the same path as an earlier entry: {shown}")
            digest = hashlib.sha256(data).hexdigest()
            if digest in first_of:  # the same bytes: no need to decode them again
                raise Rejected(Reason.DUPLICATE, f"same bytes as {first_of[digest]}")
            pixels = decode_image(data, limits, shown)
            seen_pixels = f"pixels:{pixel_digest(pixels)}"
            if seen_pixels in first_of:
                raise Rejected(Reason.DUPLICATE, f"same pixels as {first_of[seen_pixels]}")
            if prompt is None and prompts:
                prompt = prompts[stable_seed(seed, digest) % len(prompts)]
            chosen = check_prompt(prompt, count_tokens, limits)
        except Rejected as rejected:
            rejects.append({"path": shown, "reason": str(rejected.reason), "detail": printable(rejected.detail)})
            continue
        first_of[digest] = first_of[seen_pixels] = shown
        ids.add(shown)
        rows.append(
            {"id": shown, "image_sha256": digest, "prompt": chosen, "image_png": encode_png(pixels), "source": source}
        )
    images = pl.DataFrame(rows, schema={**POOL_SCHEMA, "source": pl.String})
    return ImagePool(images, pl.DataFrame(rejects, schema=REJECTS_SCHEMA))
