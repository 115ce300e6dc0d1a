"""The artifact store as a Dagster resource, and the IO manager that versions every asset by content."""

import os

import dagster as dg
import polars as pl
from pydantic import Field

from si_assets.storage import ArtifactStore, Checkpoint, StoredArtifact

DEFAULT_STORE_ROOT = ".si_store"


def default_store_root() -> str:
    return os.environ.get("SI_STORE", DEFAULT_STORE_ROOT)


def _slot(context: dg.InputContext | dg.OutputContext) -> tuple[str, str | None]:
    asset = "/".join(context.asset_key.path)
    partition = context.asset_partition_key if context.has_asset_partitions else None
    return asset, partition


class ArtifactStoreResource(dg.ConfigurableResource):
    """Gives assets direct access to the store (staging folders, named pointers, memoised results)."""

    root: str = Field(default_factory=default_store_root, description="local folder or fsspec URL")

    def get(self) -> ArtifactStore:
        return ArtifactStore(self.root)


class ContentAddressedIOManager(dg.ConfigurableIOManager):
    """Writes each output under its content hash and records where; reads the version Dagster recorded
    for the upstream materialization (falling back to the store's last-written version)."""

    root: str = Field(default_factory=default_store_root, description="local folder or fsspec URL")

    def _store(self) -> ArtifactStore:
        return ArtifactStore(self.root)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | Checkpoint) -> None:
        asset, partition = _slot(context)
        store = self._store()
        artifact = store.put(obj, asset, partition)
        metadata: dict = {
            "path": dg.MetadataValue.path(artifact.uri),
            "content_hash": artifact.content_hash,
            "artifact_kind": artifact.kind,
            "stored_versions": len(store.versions(asset, partition)),
        }
        if isinstance(obj, pl.DataFrame):
            metadata["dagster/row_count"] = obj.height
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | Checkpoint:
        asset, partition = _slot(context)
        artifact = self._recorded(context, asset, partition) or self._store().head(asset, partition)
        if artifact is None:
            raise FileNotFoundError(
                f"no stored version of {asset!r}{f' [{partition}]' if partition else ''} under {self.root}; "
                "materialize it first"
            )
        return self._store().load(artifact)

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
