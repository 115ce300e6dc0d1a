"""What the embedded world looks like: every knob that shapes images, captions and splits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from si_assets.settings import Settings

DEFAULT_KINDS = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon"]
DEFAULT_COLOURS = {
    "red": [200, 40, 40],
    "green": [40, 160, 60],
    "blue": [50, 80, 210],
    "yellow": [220, 200, 40],
}
# Partners that usually appear together, like a knife and a fork: the language prior learns to expect them.
DEFAULT_COOCCURRENCE = [["circle", "square"], ["triangle", "star"], ["cross", "ring"]]
# `dev` chooses defaults and gates promotion; `test` is only reported. 1,000 images each keep object precision's
# bootstrap standard error under a point for the bootstrap seed (docs/results.md, "Evaluation splits").
DEFAULT_SPLITS = {"seed_train": 6000, "clip_train": 3000, "improve": 1500, "dev": 1000, "test": 1000}


class WorldSpec(Settings):
    """A procedural image world. Plain pydantic so the world stays Dagster-free; the asset layer
    exposes the same fields as Dagster config."""

    seed: int = Field(0, ge=0)
    image_size: int = Field(48, ge=16)
    kinds: list[str] = Field(default_factory=lambda: list(DEFAULT_KINDS))
    colours: dict[str, list[int]] = Field(default_factory=lambda: dict(DEFAULT_COLOURS))
    cooccurrence: list[list[str]] = Field(default_factory=lambda: [list(p) for p in DEFAULT_COOCCURRENCE])
    cooccurrence_strength: float = Field(0.8, ge=0.0, le=1.0, description="P(partner present | anchor present)")
    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(4, ge=1)
    min_object_size: int = Field(10, ge=3, description="object bounding box side in pixels")
    max_object_size: int = Field(16, ge=3)
    min_contrast: float = Field(0.8, ge=0.0, le=1.0, description="object colour blend over the background")
    clutter: int = Field(1, ge=0, description="max distractor strokes per image (not objects)")
    pixel_noise: float = Field(4.0, ge=0.0, description="std of per-pixel gaussian noise, 0-255 scale")
    caption_noise: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of seed_train captions that name an absent partner object, as web captions do",
    )
    # paired by default: captions name objects as people write them, and in this world the controlled-hallucination
    # negatives beat another image's caption; in kind order they tie (docs/results.md, "Caption order")
    caption_order: Literal["kind", "paired"] = Field(
        "paired",
        description="kind: objects in a fixed kind order; paired: a random order per caption in which co-occurring "
        "kinds are named one right after the other ('a knife and a fork'), and a noisy partner right after its "
        "anchor, so a language prior that has read the anchor expects the partner next",
    )
    splits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_SPLITS))

    @model_validator(mode="after")
    def _check(self) -> WorldSpec:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects={self.min_objects} > max_objects={self.max_objects}")
        if self.min_object_size > self.max_object_size:
            raise ValueError("min_object_size > max_object_size")
        if self.max_objects > len(self.kinds):
            raise ValueError("max_objects exceeds the number of kinds (kinds are unique per image)")
        if self.max_objects > self.grid**2:
            raise ValueError(f"max_objects={self.max_objects} does not fit the {self.grid}x{self.grid} layout grid")
        unknown = {k for pair in self.cooccurrence for k in pair} - set(self.kinds)
        if unknown:
            raise ValueError(f"co-occurrence names unknown kinds: {sorted(unknown)}")
        if any(len(pair) != 2 or pair[0] == pair[1] for pair in self.cooccurrence):
            raise ValueError("each co-occurrence entry must be two different kinds")
        partners = [k for pair in self.cooccurrence for k in pair]
        if len(partners) != len(set(partners)):
            raise ValueError("a kind may belong to at most one co-occurrence pair")
        missing = {"seed_train", "clip_train", "improve", "dev", "test"} - set(self.splits)
        if missing:
            raise ValueError(f"splits missing: {sorted(missing)}")
        return self

    @property
    def grid(self) -> int:
        """Objects sit in cells of a grid so they rarely overlap."""
        return max(2, self.image_size // 16)

    @property
    def partner(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for a, b in self.cooccurrence:
            out[a], out[b] = b, a
        return out
