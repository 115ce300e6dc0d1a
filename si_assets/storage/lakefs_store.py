"""The artifact store on lakeFS (Dagster-free): a commit per write, a branch per round, a tag per champion.

Same layout and promises as the folder store (`store.py`), through the lakeFS SDK (`lakefs.Client`, whose
`sdk_client` is the generated `lakefs_sdk` API):
- a write happens on a hidden ephemeral branch (`tx-...`) taken from the target branch: upload every file,
  commit with the caller's metadata (Dagster run id, asset, partition, code version), merge back, delete the
  ephemeral branch. Anything failing before the merge deletes the ephemeral branch: nothing is committed.
- round partitions (`round-0001`, ...) are written on a branch of that name, created from the base branch;
  everything else (the world, bootstrap models, memos, pointers) on the base branch.
- `mark_champion(round)` merges the round's branch into the base branch and tags the merge `champion-<round>`;
  the next round reads its seed through that tag.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import lakefs
import lakefs_sdk
import polars as pl
from lakefs_sdk.exceptions import ApiException, NotFoundException

from si_assets.storage.store import (
    HASH_CHARS,
    TABLE_FILE,
    Checkpoint,
    StoredArtifact,
    StoreFiles,
    confined,
    directory_hash,
    table_bytes,
)

SCHEME = "lakefs://"
CHAMPION_TAG = "champion-{round}"
CONFLICT = 409  # lakefs_sdk raises a plain ApiException with this status on conflicts
STAGING = Path(tempfile.gettempdir()) / "si_store_staging"


class LakeFSError(RuntimeError):
    pass


class LakeFSArtifactStore(StoreFiles):
    def __init__(
        self,
        client: lakefs.Client,
        repository: str,
        base_branch: str = "main",
        prefix: str = "si_store",
        cache_dir: Path | None = None,
        *,
        branches_partition: Callable[[str], bool],
    ):
        """`branches_partition(key)` says which partitions write to a branch of their own (named as the key);
        the others, and unpartitioned assets, write to `base_branch`."""
        self.client, self.repository, self.base_branch = client, repository, base_branch
        self.branches_partition = branches_partition
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "si_store_cache"
        self.prefix = prefix.strip("/")
        self.api = client.sdk_client
        self.root_url = f"{SCHEME}{repository}/{base_branch}/{self.prefix}"
        self.is_local = False

    # --- layout ---------------------------------------------------------------------------------------
    def branch_for(self, partition: str | None) -> str:
        return partition if partition and self.branches_partition(partition) else self.base_branch

    def _path(self, relative: str) -> str:
        return f"{self.prefix}/{confined(relative)}"

    def _slot(self, asset: str, partition: str | None) -> str:
        return self._path(f"{asset}/{partition or '_'}")

    def uri(self, ref: str, path: str) -> str:
        return f"{SCHEME}{self.repository}/{ref}/{path}"

    def _parse(self, uri: str) -> tuple[str, str]:
        if not uri.startswith(f"{SCHEME}{self.repository}/"):
            raise ValueError(f"{uri!r} is not in lakeFS repository {self.repository!r}")
        ref, _, path = uri.removeprefix(f"{SCHEME}{self.repository}/").partition("/")
        return ref, path

    def staging_dir(self) -> Path:
        path = STAGING / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    # --- lakeFS primitives ------------------------------------------------------------------------------
    def _ensure_branch(self, branch: str) -> None:
        try:
            self.api.branches_api.get_branch(self.repository, branch)
        except NotFoundException:
            creation = lakefs_sdk.BranchCreation(name=branch, source=self.base_branch)
            self.api.branches_api.create_branch(self.repository, creation)

    def _exists(self, ref: str, path: str) -> bool:
        try:
            self.api.objects_api.stat_object(self.repository, ref, path)
            return True
        except NotFoundException:
            return False

    def _get(self, ref: str, path: str) -> bytes | None:
        try:
            return bytes(self.api.objects_api.get_object(self.repository, ref, path))
        except NotFoundException:
            return None

    def _list(self, ref: str, prefix: str, delimiter: str | None = None) -> list[lakefs_sdk.ObjectStats]:
        found, after = [], ""
        while True:
            page = self.api.objects_api.list_objects(
                self.repository, ref, prefix=prefix, after=after, amount=1000, delimiter=delimiter
            )
            found += page.results
            if not page.pagination.has_more:
                return found
            after = page.pagination.next_offset

    def _commit(self, branch: str, files: dict[str, bytes | Path], message: str, metadata: dict | None) -> str:
        """Upload `files` (bytes, or a local file read when its turn comes) and commit them to the existing
        `branch` atomically; returns the commit id on `branch`."""
        tx = f"tx-{uuid.uuid4().hex[:16]}"
        creation = lakefs_sdk.BranchCreation(name=tx, source=branch, hidden=True)
        self.api.branches_api.create_branch(self.repository, creation)
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        try:
            for path, data in files.items():
                content = data if isinstance(data, bytes) else Path(data).read_bytes()
                self.api.objects_api.upload_object(self.repository, tx, path, content=content)
            self.api.commits_api.commit(self.repository, tx, lakefs_sdk.CommitCreation(message=message, metadata=meta))
            merged = self.api.refs_api.merge_into_branch(
                self.repository, tx, branch, merge=lakefs_sdk.Merge(message=message, metadata=meta)
            )
        except ApiException as exc:
            if exc.status != CONFLICT:
                raise
            raise LakeFSError(f"lakeFS: writing to {branch!r} conflicted with another writer ({exc.reason})") from exc
        finally:
            self.api.branches_api.delete_branch(self.repository, tx)
        return merged.reference

    # --- writing ----------------------------------------------------------------------------------------
    def put(
        self, value: pl.DataFrame | Checkpoint, asset: str, partition: str | None = None, metadata: dict | None = None
    ) -> StoredArtifact:
        if isinstance(value, pl.DataFrame):
            data = table_bytes(value)
            digest = hashlib.sha256(data).hexdigest()
            kind, files = "table", {TABLE_FILE: data}
        elif isinstance(value, Checkpoint):
            digest = directory_hash(value.path)
            kind = "checkpoint"
            files = {
                f.relative_to(value.path).as_posix(): f for f in sorted(Path(value.path).rglob("*")) if f.is_file()
            }
        else:
            raise TypeError(f"the artifact store keeps polars DataFrames and Checkpoints, not {type(value).__name__}")
        branch, slot = self.branch_for(partition), self._slot(asset, partition)
        folder = f"{slot}/{digest[:HASH_CHARS]}"
        head = json.dumps({"kind": kind, "uri": self.uri(branch, folder), "content_hash": digest}).encode()
        self._ensure_branch(branch)
        uploads: dict[str, bytes | Path] = {}
        if not self._list(branch, f"{folder}/"):
            uploads.update({f"{folder}/{name}": data for name, data in files.items()})
        if self._get(branch, f"{slot}/HEAD") != head:
            uploads[f"{slot}/HEAD"] = head
        if uploads:
            message = f"{asset}" + (f" [{partition}]" if partition else "") + f" {digest[:HASH_CHARS]}"
            commit = self._commit(branch, uploads, message, metadata)
        else:  # identical content is already there: nothing to commit
            commit = self.api.branches_api.get_branch(self.repository, branch).commit_id
        if isinstance(value, Checkpoint) and Path(value.path).resolve().is_relative_to(STAGING.resolve()):
            shutil.rmtree(
                value.path, ignore_errors=True
            )  # uploaded: a staged folder is used up, as in the folder store
        return StoredArtifact(kind, self.uri(branch, folder), digest, commit)

    def write_bytes(self, relative: str, data: bytes) -> None:
        self._commit(self.base_branch, {self._path(relative): data}, f"write {relative}", {"kind": "pointer"})

    # --- reading ----------------------------------------------------------------------------------------
    def read_bytes(self, relative: str) -> bytes | None:
        return self._get(self.base_branch, self._path(relative))

    def head(self, asset: str, partition: str | None = None) -> StoredArtifact | None:
        data = self._get(self.branch_for(partition), f"{self._slot(asset, partition)}/HEAD")
        return None if data is None else StoredArtifact(**json.loads(data))

    def versions(self, asset: str, partition: str | None = None) -> list[str]:
        slot = self._slot(asset, partition)
        entries = self._list(self.branch_for(partition), f"{slot}/", delimiter="/")
        return sorted(e.path.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.path_type == "common_prefix")

    def read_table(self, artifact: StoredArtifact) -> pl.DataFrame:
        ref, path = self._parse(artifact.uri)
        data = self._get(ref, f"{path}/{TABLE_FILE}")
        if data is None:
            raise FileNotFoundError(f"{artifact.uri}/{TABLE_FILE} does not exist in lakeFS")
        return pl.read_parquet(io.BytesIO(data))

    def local_checkpoint(self, artifact: StoredArtifact) -> Checkpoint:
        """Downloaded once per content hash into a local cache (models load from local folders)."""
        cache = self.cache_dir / artifact.version  # the folder name is the version, as in the store
        if not cache.is_dir():
            ref, path = self._parse(artifact.uri)
            objects = self._list(ref, f"{path}/")
            if not objects:
                raise FileNotFoundError(f"{artifact.uri} has no files in lakeFS")
            tmp = cache.with_name(f"{cache.name}.tmp-{uuid.uuid4().hex}")
            for obj in objects:
                target = tmp / obj.path.removeprefix(f"{path}/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self._get(ref, obj.path) or b"")
            os.replace(tmp, cache)
        return Checkpoint(cache)

    # --- champions ----------------------------------------------------------------------------------------
    def mark_champion(self, round_key: str) -> str:
        """Merge the round's branch into the base branch and tag the merge; a conflict leaves both untouched."""
        tag = CHAMPION_TAG.format(round=round_key)
        message = f"promote {round_key}"
        try:
            merged = self.api.refs_api.merge_into_branch(
                self.repository,
                round_key,
                self.base_branch,
                merge=lakefs_sdk.Merge(message=message, metadata={"round": round_key}, allow_empty=True),
            )
        except ApiException as exc:
            if exc.status != CONFLICT:
                raise
            raise LakeFSError(
                f"lakeFS: merging {round_key!r} into {self.base_branch!r} conflicted ({exc.reason}); not promoted"
            ) from exc
        self.api.tags_api.create_tag(self.repository, lakefs_sdk.TagCreation(id=tag, ref=merged.reference, force=True))
        return tag

    def artifact_at(self, artifact: StoredArtifact, ref: str) -> StoredArtifact:
        if not ref:
            return artifact
        _, path = self._parse(artifact.uri)
        return StoredArtifact(artifact.kind, self.uri(ref, path), artifact.content_hash, artifact.commit)

    def commit_url(self, endpoint: str, commit: str) -> str:
        return f"{endpoint.rstrip('/')}/repositories/{self.repository}/commits/{commit}"
