"""Where a model comes from: a local `save_pretrained` folder, or a hub id at a pinned revision (Dagster-free).

A hub id resolves to its snapshot folder in the Hugging Face cache. Where the hub is reachable the snapshot is
downloaded first (weights as safetensors only); where it is not (`HF_HUB_OFFLINE=1`, a machine without network
access) the model must already be in the cache, put there with `hf download`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from pydantic import Field

from si_assets.settings import Settings

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Everything a checkpoint needs besides pickled weights, which are never loaded.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


class SeedSettings(Settings):
    """The model round 1 starts from (later rounds start from the champion)."""

    base: str | None = Field(
        None,
        description="a save_pretrained folder or a hub id (org/name, from the Hugging Face cache when the hub is "
        "offline); unset: the bootstrap seed",
    )
    revision: str | None = Field(None, description="with a hub id: the commit, tag or branch to pin")


class ModelSourceError(ValueError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a folder `from_pretrained` loads
    origin: str  # what to record: the folder, or hub id @ commit

    @property
    def is_hub(self) -> bool:
        return "@" in self.origin


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def absolute(path: str | Path) -> Path:
    """`~` expanded, `..` folded and a relative path made absolute against the working directory (symlinks kept,
    so the path is the one the user wrote)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def looks_like_path(source: str) -> bool:
    """A source written as a path: absolute, relative to `.`/`..`, under `~`, or deeper than a hub id's one slash.
    (`org/name` may be either; it is a folder when one exists.)"""
    return source.startswith((".", "~", "/", "\\")) or source.count("/") > 1 or "\\" in source


def resolve_model(source: str, revision: str | None = None, cache_dir: str | Path | None = None) -> ResolvedModel:
    """A folder as it is (`~` expanded, a relative path against the working directory); a hub id (`org/name`) to
    its cached snapshot at `revision` (commit, tag or branch)."""
    folder = absolute(source)
    if folder.is_dir():
        if revision:
            raise ModelSourceError(f"revision {revision!r} was given for the local folder {source!r}; drop it")
        return ResolvedModel(folder, str(folder))
    relative = "" if Path(source).expanduser().is_absolute() else f" (read from the working directory {Path.cwd()})"
    if looks_like_path(source):
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ModelSourceError(
            f"model source {source!r} is a path, and {folder} {what}{relative}; give the save_pretrained folder "
            "of the model"
        )
    if not HUB_ID.match(source):
        raise ModelSourceError(
            f"model source {source!r} is neither a folder nor a hub id like 'llava-hf/llava-1.5-7b-hf'"
        )
    try:
        path = snapshot_download(
            source,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=CHECKPOINT_FILES,
            local_files_only=hub_offline(),
        )
    except LocalEntryNotFoundError as exc:
        at = f" --revision {revision}" if revision else ""
        raise ModelSourceError(
            f"hub model {source!r}{' at ' + revision if revision else ''} is not in the Hugging Face cache and the "
            f"hub is not reachable (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); there is no folder "
            f"{folder}{relative}. Download it where there is network with `hf download {source}{at}` (same "
            "HF_HOME), or give a local folder."
        ) from exc
    except HfHubHTTPError as exc:  # unknown repository or revision, no access
        raise ModelSourceError(f"hub model {source!r} could not be fetched: {exc}") from exc
    path = Path(path)
    return ResolvedModel(path, f"{source}@{path.name}")  # the snapshot folder is named by its commit
