"""Content-addressed storage of tables (Parquet) and checkpoints (save_pretrained folders)."""

from si_assets.storage.store import ArtifactStore, Checkpoint, StoredArtifact, content_hash, directory_hash, table_bytes

__all__ = ["ArtifactStore", "Checkpoint", "StoredArtifact", "content_hash", "directory_hash", "table_bytes"]
