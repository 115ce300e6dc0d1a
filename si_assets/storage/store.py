"""A content-addressed artifact store on any fsspec filesystem (Dagster-free).

Every version lives under a path named by its content hash, so a materialization never overwrites an
earlier one, identical content is stored once, and the hash doubles as the Dagster data version.
Layout:  <root>/<asset>/<partition or _>/<hash16>/{data.parquet | checkpoint files}
         <root>/<asset>/<partition or _>/HEAD     the last version written (a convenience, not lineage)
         <root>/_pointers/<name>.json              named pointers, e.g. the promoted champion
         <root>/_chunks/<step>/<key>/<n>.parquet    finished chunks of long steps (resume after a crash)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import polars as pl
from fsspec.core import url_to_fs

TABLE_FILE = "data.parquet"
HASH_CHARS = 16


@dataclass(frozen=True)
class Checkpoint:
    """A `save_pretrained`-style directory. Produced in a staging folder, then moved into the store."""

    path: Path

    def __post_init__(self) -> None:
        if not Path(self.path).is_dir():
            raise NotADirectoryError(f"checkpoint directory {self.path} does not exist")

    @property
    def version(self) -> str:
        """The data version of a stored checkpoint: the store names each version's folder by its hash."""
        return Path(self.path).name


@dataclass(frozen=True)
class StoredArtifact:
    kind: str  # "table" | "checkpoint"
    uri: str  # where the version lives (a folder)
    content_hash: str
    # The commit that wrote it, in a versioned backend (lakeFS); not part of its identity, which is its content.
    commit: str | None = field(default=None, compare=False)

    @property
    def version(self) -> str:
        return self.content_hash[:HASH_CHARS]


def table_bytes(df: pl.DataFrame) -> bytes:
    """Deterministic Parquet bytes (no statistics timestamps; fixed compression)."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", compression_level=3, statistics=False)
    return buf.getvalue()


def _update_with_file(digest, file: Path) -> None:
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def file_hash(file: Path) -> str:
    """sha256 of a file's content, read in blocks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    _update_with_file(digest, file)
    return digest.hexdigest()


def directory_hash(path: Path) -> str:
    """Hash of relative file names and contents, in sorted order: the same files give the same hash."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        _update_with_file(digest, file)
        digest.update(b"\0")
    return digest.hexdigest()


def confined(relative: str) -> str:
    """`relative` if it stays under a store's root (no absolute path, no `..`, no empty part); else ValueError."""
    parts = relative.split("/")
    if relative.startswith("/") or ".." in parts or not all(parts):
        raise ValueError(f"refusing a store path that escapes the root: {relative!r}")
    return relative


class StoreFiles:
    """What every backend derives from its `write_bytes` / `read_bytes` / `read_table` / `local_checkpoint`:
    named pointers, finished chunks of long steps, and loading a stored version."""

    def write_bytes(self, relative: str, data: bytes) -> None:
        raise NotImplementedError

    def read_bytes(self, relative: str) -> bytes | None:
        raise NotImplementedError

    def read_table(self, artifact: StoredArtifact) -> pl.DataFrame:
        raise NotImplementedError

    def local_checkpoint(self, artifact: StoredArtifact) -> Checkpoint:
        raise NotImplementedError

    def write_pointer(self, name: str, value: dict) -> None:
        self.write_bytes(f"_pointers/{name}.json", json.dumps(value, sort_keys=True).encode())

    def read_pointer(self, name: str) -> dict | None:
        data = self.read_bytes(f"_pointers/{name}.json")
        return None if data is None else json.loads(data)

    def write_part(self, folder: str, name: str, df: pl.DataFrame) -> None:
        self.write_bytes(f"{folder}/{name}.parquet", table_bytes(df))

    def read_part(self, folder: str, name: str) -> pl.DataFrame | None:
        data = self.read_bytes(f"{folder}/{name}.parquet")
        return None if data is None else pl.read_parquet(io.BytesIO(data))

    def load(self, artifact: StoredArtifact) -> pl.DataFrame | Checkpoint:
        return self.read_table(artifact) if artifact.kind == "table" else self.local_checkpoint(artifact)


def content_hash(value: pl.DataFrame | Checkpoint) -> str:
    if isinstance(value, pl.DataFrame):
        return hashlib.sha256(table_bytes(value)).hexdigest()
    if isinstance(value, Checkpoint):
        return directory_hash(value.path)
    raise TypeError(f"the artifact store keeps polars DataFrames and Checkpoints, not {type(value).__name__}")


class ArtifactStore(StoreFiles):
    def __init__(self, root: str | os.PathLike) -> None:
        self.root_url = str(root)
        self.fs, self.root = url_to_fs(self.root_url)
        self.fs.makedirs(self.root, exist_ok=True)
        self.is_local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)

    # --- layout -----------------------------------------------------------------------------------
    def _slot(self, asset: str, partition: str | None) -> str:
        slot = confined(f"{asset}/{partition or '_'}")
        return f"{self.root}/{slot}"

    def staging_dir(self) -> Path:
        """A fresh local folder to build a checkpoint in; moved into the store by put_checkpoint."""
        path = self.staging_dir_root() / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def _is_staged(self, path: Path) -> bool:
        staging = self.staging_dir_root()
        return Path(path).resolve().is_relative_to(staging.resolve())

    def staging_dir_root(self) -> Path:
        return Path(self.root) / ".staging" if self.is_local else Path(tempfile.gettempdir()) / "si_store_staging"

    # --- writing ------------------------------------------------------------------------------------
    def put(
        self, value: pl.DataFrame | Checkpoint, asset: str, partition: str | None = None, metadata: dict | None = None
    ) -> StoredArtifact:
        """Store a version; `metadata` (who wrote it: run, asset, partition, code version) goes into the commit
        of a versioned backend; a plain folder has no commits to put it in."""
        if isinstance(value, pl.DataFrame):
            return self.put_table(value, asset, partition)
        if isinstance(value, Checkpoint):
            return self.put_checkpoint(value, asset, partition)
        raise TypeError(f"the artifact store keeps polars DataFrames and Checkpoints, not {type(value).__name__}")

    def put_table(self, df: pl.DataFrame, asset: str, partition: str | None = None) -> StoredArtifact:
        data = table_bytes(df)
        digest = hashlib.sha256(data).hexdigest()
        folder = f"{self._slot(asset, partition)}/{digest[:HASH_CHARS]}"
        if not self.fs.exists(f"{folder}/{TABLE_FILE}"):
            tmp = f"{self._slot(asset, partition)}/.tmp-{uuid.uuid4().hex}"
            self.fs.makedirs(tmp, exist_ok=True)
            with self.fs.open(f"{tmp}/{TABLE_FILE}", "wb") as fh:
                fh.write(data)
            self._publish(tmp, folder)
        return self._record(StoredArtifact("table", folder, digest), asset, partition)

    def put_checkpoint(self, checkpoint: Checkpoint, asset: str, partition: str | None = None) -> StoredArtifact:
        digest = directory_hash(checkpoint.path)
        folder = f"{self._slot(asset, partition)}/{digest[:HASH_CHARS]}"
        if self.fs.exists(folder):
            if self._is_staged(checkpoint.path):
                shutil.rmtree(checkpoint.path, ignore_errors=True)  # identical content is already stored
        elif self.is_local and self._is_staged(checkpoint.path):
            self.fs.makedirs(self._slot(asset, partition), exist_ok=True)
            os.replace(checkpoint.path, folder)  # atomic on one filesystem
        elif self.is_local:  # a folder we do not own (e.g. an upstream version): copy, never move
            tmp = f"{self._slot(asset, partition)}/.tmp-{uuid.uuid4().hex}"
            shutil.copytree(checkpoint.path, tmp)
            self._publish(tmp, folder)
        else:
            tmp = f"{self._slot(asset, partition)}/.tmp-{uuid.uuid4().hex}"
            self.fs.put(str(checkpoint.path), tmp, recursive=True)
            self._publish(tmp, folder)
            if self._is_staged(checkpoint.path):
                shutil.rmtree(checkpoint.path, ignore_errors=True)
        return self._record(StoredArtifact("checkpoint", folder, digest), asset, partition)

    def _publish(self, tmp: str, folder: str) -> None:
        """Move a fully written temporary folder to its final name; a crash before this leaves only a .tmp."""
        if self.fs.exists(folder):  # a concurrent writer published the same content
            self.fs.rm(tmp, recursive=True)
        elif self.is_local:
            os.replace(tmp, folder)
        else:
            self.fs.mv(tmp, folder, recursive=True)

    def _record(self, artifact: StoredArtifact, asset: str, partition: str | None) -> StoredArtifact:
        head = f"{self._slot(asset, partition)}/HEAD"
        with self.fs.open(head, "w") as fh:
            json.dump({"kind": artifact.kind, "uri": artifact.uri, "content_hash": artifact.content_hash}, fh)
        return artifact

    # --- reading ------------------------------------------------------------------------------------
    def head(self, asset: str, partition: str | None = None) -> StoredArtifact | None:
        head = f"{self._slot(asset, partition)}/HEAD"
        if not self.fs.exists(head):
            return None
        with self.fs.open(head, "r") as fh:
            return StoredArtifact(**json.load(fh))

    def versions(self, asset: str, partition: str | None = None) -> list[str]:
        slot = self._slot(asset, partition)
        if not self.fs.exists(slot):
            return []
        return sorted(
            p.rstrip("/").rsplit("/", 1)[-1]
            for p in self.fs.ls(slot, detail=False)
            if self.fs.isdir(p) and not p.rstrip("/").rsplit("/", 1)[-1].startswith(".")
        )

    def read_table(self, artifact: StoredArtifact) -> pl.DataFrame:
        with self.fs.open(f"{artifact.uri}/{TABLE_FILE}", "rb") as fh:
            return pl.read_parquet(fh)

    def local_checkpoint(self, artifact: StoredArtifact) -> Checkpoint:
        """A local folder with the checkpoint's files (the store folder itself when the store is local)."""
        if self.is_local:
            return Checkpoint(Path(artifact.uri))
        cache = Path(tempfile.gettempdir()) / "si_store_cache" / artifact.version  # the folder name is the version
        if not cache.is_dir():
            tmp = cache.with_name(cache.name + f".tmp-{uuid.uuid4().hex}")
            self.fs.get(artifact.uri.rstrip("/") + "/", str(tmp), recursive=True)
            os.replace(tmp, cache)
        return Checkpoint(cache)

    # --- champions (a versioned backend merges and tags; a folder has nothing to do) -----------------
    def mark_champion(self, round_key: str) -> str:
        """Publish round `round_key`'s work as the champion's; returns the ref that pins it ("" here)."""
        return ""

    def artifact_at(self, artifact: StoredArtifact, ref: str) -> StoredArtifact:
        """The same artifact read through `ref` (a tag), where the backend has refs."""
        return artifact

    # --- small files written atomically (named pointers, finished chunks of long steps) ---------------
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write `<root>/<relative>` so that readers see the old file or the whole new one, never a part."""
        path = f"{self.root}/{confined(relative)}"
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        if self.is_local:
            os.replace(tmp, path)
        else:
            self.fs.mv(tmp, path)

    def read_bytes(self, relative: str) -> bytes | None:
        path = f"{self.root}/{confined(relative)}"
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as fh:
            return fh.read()
