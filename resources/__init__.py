"""Dagster resources: the compute device, model loading, the CLIP verifier, the artifact store."""

from resources.device import ComputeDevice
from resources.inbox import ImageInbox
from resources.models import ClipVerifier, VisionLanguageModels
from resources.store import (
    ArtifactStoreResource,
    ContentAddressedIOManager,
    default_store_root,
    lakefs_store_from_env,
)

__all__ = [
    "ArtifactStoreResource",
    "ClipVerifier",
    "ComputeDevice",
    "ContentAddressedIOManager",
    "ImageInbox",
    "VisionLanguageModels",
    "default_store_root",
    "lakefs_store_from_env",
]
