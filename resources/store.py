"""The artifact store as a Dagster resource (a local folder / fsspec URL, or lakeFS, chosen by configuration),
and the IO manager that versions every asset by content."""

import os
from typing import Literal

import dagster as dg
import lakefs
import polars as pl
from pydantic import Field

from si_assets.rounds.naming import is_round_key
from si_assets.storage import ArtifactStore, Checkpoint, StoredArtifact
from si_assets.storage.lakefs_store import LakeFSArtifactStore

DEFAULT_STORE_ROOT = ".si_store"


def default_store_root() -> str:
    return os.environ.get("SI_STORE", DEFAULT_STORE_ROOT)


def _slot(context: dg.InputContext | dg.OutputContext) -> tuple[str, str | None]:
    asset = "/".join(context.asset_key.path)
    partition = context.asset_partition_key if context.has_asset_partitions else None
    return asset, partition


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where artifacts live. `backend: local` (default): a folder or fsspec URL. `backend: lakefs`: a lakeFS
    repository, a commit per write, a branch per round, a tag per champion; credentials come from the
    environment (`dagster.EnvVar`), never from config files."""

    backend: Literal["local", "lakefs"] = "local"
    root: str = Field(default_factory=default_store_root, description="local: a folder or fsspec URL")
    lakefs_endpoint: str | None = Field(None, description="e.g. http://localhost:8000")
    lakefs_access_key_id: str | None = None
    lakefs_secret_access_key: str | None = None
    lakefs_repository: str | None = None
    lakefs_base_branch: str = "main"
    lakefs_prefix: str = Field("si_store", description="folder inside the repository")

    def get(self) -> ArtifactStore | LakeFSArtifactStore:
        if self.backend == "local":
            return ArtifactStore(self.root)
        missing = [
            name
            for name in ("lakefs_endpoint", "lakefs_access_key_id", "lakefs_secret_access_key", "lakefs_repository")
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(f"backend 'lakefs' needs {', '.join(missing)}")
        client = lakefs.Client(
            host=self.lakefs_endpoint, username=self.lakefs_access_key_id, password=self.lakefs_secret_access_key
        )
        return LakeFSArtifactStore(
            client,
            self.lakefs_repository,
            self.lakefs_base_branch,
            self.lakefs_prefix,
            branches_partition=is_round_key,  # a branch per round
        )

    def commit_url(self, commit: str) -> str | None:
        if self.backend != "lakefs" or not self.lakefs_endpoint:
            return None
        return f"{self.lakefs_endpoint.rstrip('/')}/repositories/{self.lakefs_repository}/commits/{commit}"


def lakefs_store_from_env() -> ArtifactStoreResource:
    """The lakeFS backend configured the way lakectl is (LAKECTL_* variables) plus SI_LAKEFS_REPOSITORY."""
    return ArtifactStoreResource(
        backend="lakefs",
        lakefs_endpoint=dg.EnvVar("LAKECTL_SERVER_ENDPOINT_URL"),
        lakefs_access_key_id=dg.EnvVar("LAKECTL_CREDENTIALS_ACCESS_KEY_ID"),
        lakefs_secret_access_key=dg.EnvVar("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"),
        lakefs_repository=dg.EnvVar("SI_LAKEFS_REPOSITORY"),
        lakefs_base_branch=os.environ.get("SI_LAKEFS_BRANCH", "main"),
        lakefs_prefix=os.environ.get("SI_LAKEFS_PREFIX", "si_store"),
    )


class ContentAddressedIOManager(dg.ConfigurableIOManager):
    """Writes each output under its content hash and records where (and, on lakeFS, in which commit); reads the
    version Dagster recorded for the upstream materialization (falling back to the store's last-written one)."""

    store: dg.ResourceDependency[ArtifactStoreResource]

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | Checkpoint) -> None:
        asset, partition = _slot(context)
        store = self.store.get()
        who = {  # commit metadata in a versioned backend: which run wrote what
            "dagster/run_id": context.run_id,
            "dagster/asset_key": asset,
            "dagster/partition": partition or "",
            "dagster/code_version": context.asset_spec.code_version or "",
        }
        artifact = store.put(obj, asset, partition, metadata=who)
        metadata: dict = {
            "path": dg.MetadataValue.path(artifact.uri),
            "content_hash": artifact.content_hash,
            "artifact_kind": artifact.kind,
            "stored_versions": len(store.versions(asset, partition)),
        }
        if artifact.commit:
            metadata["lakefs/commit"] = artifact.commit
            url = self.store.commit_url(artifact.commit)
            if url:
                metadata["lakefs/url"] = dg.MetadataValue.url(url)
        if isinstance(obj, pl.DataFrame):
            metadata["dagster/row_count"] = obj.height
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | Checkpoint:
        asset, partition = _slot(context)
        store = self.store.get()
        artifact = self._recorded(context, asset, partition) or store.head(asset, partition)
        if artifact is None:
            raise FileNotFoundError(
                f"no stored version of {asset!r}{f' [{partition}]' if partition else ''} in {store.root_url}; "
                "materialize it first"
            )
        return store.load(artifact)

    @staticmethod
    def _recorded(context: dg.InputContext, asset: str, partition: str | None) -> StoredArtifact | None:
        """The path and hash from the latest materialization event of the upstream asset."""
        try:
            instance = context.instance
        except Exception:  # no instance: direct invocation in tests
            return None
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition] if partition else None),
            limit=1,
        ).records
        if not records:
            return None
        meta = records[0].asset_materialization.metadata if records[0].asset_materialization else {}
        if not {"path", "content_hash", "artifact_kind"} <= set(meta):
            return None
        return StoredArtifact(meta["artifact_kind"].value, meta["path"].value, meta["content_hash"].value)
