"""Where new images arrive for the new-images sensor."""

import os

import dagster as dg
from pydantic import Field


class ImageInbox(dg.ConfigurableResource):
    """A folder the new-images sensor watches; rounds started by the sensor or the schedule take their images
    from it. Unset: rounds use the embedded world's `improve` split."""

    folder: str | None = Field(
        default_factory=lambda: os.environ.get("SI_IMAGE_INBOX") or None, description="default: $SI_IMAGE_INBOX"
    )
    min_new_images: int = Field(1, ge=1, description="new (or changed) files needed before a round starts")
