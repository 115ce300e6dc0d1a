"""An in-memory lakeFS behind the generated `lakefs_sdk` API methods, patched in the way lakeFS tests its own
Python client (monkeypatching `lakefs_sdk.*Api` methods), that records every call for sequence assertions.

It implements what the store uses: branches (with staging), objects, commits, merges (three-way, with
conflicts), tags. CI runs no lakeFS server; `tests/test_lakefs_live.py` runs against a real one when configured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import lakefs_sdk
import pytest
from lakefs_sdk.exceptions import ApiException, NotFoundException

PATCHED = {
    lakefs_sdk.BranchesApi: ("create_branch", "get_branch", "delete_branch"),
    lakefs_sdk.ObjectsApi: ("upload_object", "get_object", "stat_object", "list_objects"),
    lakefs_sdk.CommitsApi: ("commit",),
    lakefs_sdk.RefsApi: ("merge_into_branch",),
    lakefs_sdk.TagsApi: ("create_tag",),
}


def _stats(path: str, data: bytes | None = None) -> lakefs_sdk.ObjectStats:
    if data is None:
        return lakefs_sdk.ObjectStats(path=path, path_type="common_prefix", physical_address="", checksum="", mtime=0)
    digest = hashlib.sha256(data).hexdigest()
    return lakefs_sdk.ObjectStats(
        path=path,
        path_type="object",
        physical_address=f"mem://{digest}",
        checksum=digest,
        size_bytes=len(data),
        mtime=0,
    )


class FakeLakeFS:
    def __init__(self, repository: str = "repo", base_branch: str = "main") -> None:
        self.repository = repository
        self.commits: dict[str, dict] = {"c0": {"tree": {}, "parents": [], "message": "init", "metadata": {}}}
        self.branches: dict[str, dict] = {base_branch: {"head": "c0", "staged": {}}}
        self.tags: dict[str, str] = {}
        self.calls: list[tuple[str, tuple, dict]] = []
        self.failures: dict[str, Callable[[tuple, dict], None]] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeLakeFS:
        for api, names in PATCHED.items():
            for name in names:
                monkeypatch.setattr(api, name, self._method(name))
        return self

    def _method(self, name: str):
        def method(api_self, *args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name in self.failures:
                self.failures[name](args, kwargs)
            return getattr(self, f"_{name}")(*args, **kwargs)

        return method

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    # --- refs -------------------------------------------------------------------------------------------
    def _commit_of(self, ref: str) -> str:
        if ref in self.branches:
            return self.branches[ref]["head"]
        if ref in self.tags:
            return self.tags[ref]
        if ref in self.commits:
            return ref
        raise NotFoundException(status=404, reason=f"ref {ref} not found")

    def tree(self, ref: str) -> dict[str, bytes]:
        tree = dict(self.commits[self._commit_of(ref)]["tree"])
        if ref in self.branches:
            tree.update(self.branches[ref]["staged"])
        return tree

    def _ancestors(self, commit: str) -> list[str]:
        seen, queue = [], [commit]
        while queue:
            c = queue.pop(0)
            if c not in seen:
                seen.append(c)
                queue += self.commits[c]["parents"]
        return seen

    # --- the API ----------------------------------------------------------------------------------------
    def _get_branch(self, repository: str, branch: str) -> lakefs_sdk.Ref:
        if branch not in self.branches:
            raise NotFoundException(status=404, reason=f"branch {branch} not found")
        return lakefs_sdk.Ref(id=branch, commit_id=self.branches[branch]["head"])

    def _create_branch(self, repository: str, creation: lakefs_sdk.BranchCreation) -> str:
        if creation.name in self.branches:
            raise ApiException(status=409, reason="branch already exists")
        self.branches[creation.name] = {"head": self._commit_of(creation.source), "staged": {}}
        return creation.name

    def _delete_branch(self, repository: str, branch: str) -> None:
        if self.branches.pop(branch, None) is None:
            raise NotFoundException(status=404, reason=f"branch {branch} not found")

    def _upload_object(self, repository: str, branch: str, path: str, content: bytes = b"", **_) -> object:
        self._get_branch(repository, branch)
        self.branches[branch]["staged"][path] = bytes(content)
        return _stats(path, bytes(content))

    def _get_object(self, repository: str, ref: str, path: str, **_) -> bytearray:
        tree = self.tree(ref)
        if path not in tree:
            raise NotFoundException(status=404, reason=f"{path} not found")
        return bytearray(tree[path])

    def _stat_object(self, repository: str, ref: str, path: str, **_) -> lakefs_sdk.ObjectStats:
        return _stats(path, bytes(self._get_object(repository, ref, path)))

    def _list_objects(self, repository, ref, prefix="", after="", amount=1000, delimiter=None, **_):
        entries: dict[str, bytes | None] = {}
        for path, data in self.tree(ref).items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if delimiter and delimiter in rest:
                entries[prefix + rest.split(delimiter, 1)[0] + delimiter] = None
            else:
                entries[path] = data
        keys = [k for k in sorted(entries) if k > (after or "")]
        page = keys[:amount]
        return lakefs_sdk.ObjectStatsList(
            pagination=lakefs_sdk.Pagination(
                has_more=len(keys) > amount,
                next_offset=page[-1] if page else "",
                results=len(page),
                max_per_page=amount,
            ),
            results=[_stats(k, entries[k]) for k in page],
        )

    def _new_commit(self, tree: dict, parents: list[str], message: str, metadata: dict | None) -> str:
        commit_id = hashlib.sha256(f"{sorted(tree.items())}{parents}{message}".encode()).hexdigest()[:20]
        self.commits[commit_id] = {"tree": tree, "parents": parents, "message": message, "metadata": metadata or {}}
        return commit_id

    def _commit(self, repository: str, branch: str, creation: lakefs_sdk.CommitCreation, **_) -> lakefs_sdk.Commit:
        state = self.branches[branch]
        if not state["staged"]:
            raise ApiException(status=400, reason="commit: no changes")
        tree = {**self.commits[state["head"]]["tree"], **state["staged"]}
        commit_id = self._new_commit(tree, [state["head"]], creation.message, creation.metadata)
        state.update(head=commit_id, staged={})
        return lakefs_sdk.Commit(
            id=commit_id,
            parents=self.commits[commit_id]["parents"],
            committer="fake",
            message=creation.message,
            creation_date=0,
            meta_range_id="",
            metadata=creation.metadata,
        )

    def _merge_into_branch(self, repository, source_ref, destination_branch, merge=None, **_):
        source, destination = self._commit_of(source_ref), self.branches[destination_branch]["head"]
        base = next(c for c in self._ancestors(source) if c in set(self._ancestors(destination)))
        base_tree, src_tree, dst_tree = (self.commits[c]["tree"] for c in (base, source, destination))
        src_changes = {p: v for p, v in src_tree.items() if base_tree.get(p) != v}
        dst_changes = {p: v for p, v in dst_tree.items() if base_tree.get(p) != v}
        conflicts = [p for p in src_changes if p in dst_changes and dst_changes[p] != src_changes[p]]
        if conflicts:
            raise ApiException(status=409, reason=f"merge conflict on {conflicts[:3]}")
        if not src_changes and not (merge and merge.allow_empty):
            raise ApiException(status=400, reason="merge: no changes")
        message = merge.message if merge else "merge"
        commit_id = self._new_commit(
            {**dst_tree, **src_changes}, [destination, source], message, merge and merge.metadata
        )
        self.branches[destination_branch]["head"] = commit_id
        return lakefs_sdk.MergeResult(reference=commit_id)

    def _create_tag(self, repository: str, creation: lakefs_sdk.TagCreation) -> lakefs_sdk.Ref:
        if creation.id in self.tags and not creation.force:
            raise ApiException(status=409, reason="tag exists")
        self.tags[creation.id] = self._commit_of(creation.ref)
        return lakefs_sdk.Ref(id=creation.id, commit_id=self.tags[creation.id])
