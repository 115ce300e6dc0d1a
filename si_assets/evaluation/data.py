"""What an evaluation runs on (Dagster-free): the embedded world's `eval` split, or a COCO-format set (images
folder, `instances_*.json`, optional CHAIR synonyms and POPE question files)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from si_assets.collection.validation import InputLimits, Rejected, decode_image, read_file, resolve_inside
from si_assets.evaluation.coco import coco_vocabulary, load_coco_instances, load_pope_questions, load_synonyms
from si_assets.evaluation.metrics import ObjectVocabulary, PopeQuestion
from si_assets.storage import content_hash
from si_assets.world import EVAL_PROMPT, decode_png
from si_assets.world.vocabulary import world_vocabulary


class EvalSettings(BaseModel):
    """The evaluation step: which held-out images, the prompts and how many POPE questions."""

    model_config = ConfigDict(frozen=True)

    source: Literal["world", "coco"] = Field("world", description="'coco': the coco_* files below")
    coco_instances: str | None = Field(None, description="instances_*.json (COCO format)")
    coco_images: str | None = Field(None, description="the folder the instances' file_names are in")
    coco_synonyms: str | None = Field(None, description="CHAIR's synonyms.txt (optional)")
    pope_files: list[str] = Field(default_factory=list, description="POPE question files; none: built from labels")
    max_images: int | None = Field(None, ge=1, description="evaluate the first N images only")
    caption_prompt: str = EVAL_PROMPT
    pope_per_image: int = Field(2, ge=0)
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    seed: int = Field(0, description="POPE question sampling; the same in every round, so rounds compare")

    @model_validator(mode="after")
    def _coco_complete(self) -> EvalSettings:
        if self.source == "coco" and not (self.coco_instances and self.coco_images):
            raise ValueError("source 'coco' needs coco_instances and coco_images")
        return self

    def metrics_key(self) -> str:
        """What determines a checkpoint's metrics besides the data (not the batch size, nor extra fields such as
        the gate's)."""
        return self.model_dump_json(include=set(EvalSettings.model_fields) - {"batch_size"})

    def data(self, world_eval: pl.DataFrame) -> EvalData:
        if self.source == "world":
            return world_eval_data(world_eval.head(self.max_images) if self.max_images else world_eval)
        return coco_eval_data(
            self.coco_instances, self.coco_images, self.coco_synonyms, self.pope_files, self.max_images
        )


@dataclass(frozen=True)
class EvalData:
    ids: list[str]
    images: list[Image.Image]
    truths: list[list[str]]
    vocab: ObjectVocabulary
    questions: list[PopeQuestion] | None  # None: built from the ground truth
    fingerprint: str  # changes when any image, label, synonym or question changes
    source: str


def world_eval_data(world_eval: pl.DataFrame) -> EvalData:
    return EvalData(
        ids=world_eval["id"].to_list(),
        images=[decode_png(b) for b in world_eval["image_png"]],
        truths=world_eval["objects"].to_list(),
        vocab=ObjectVocabulary.from_kinds(world_vocabulary(world_eval)[0]),
        questions=None,
        fingerprint=content_hash(world_eval),
        source="world:eval",
    )


def coco_eval_data(
    instances: str | Path,
    images_dir: str | Path,
    synonyms: str | Path | None = None,
    pope_files: Sequence[str | Path] = (),
    limit: int | None = None,
) -> EvalData:
    """The first `limit` annotated images (all by default). Every image must be readable: an evaluation set with
    holes would not compare with published numbers, so a bad file is an error that names it."""
    labeled = load_coco_instances(instances)
    digest = hashlib.sha256(Path(instances).read_bytes())
    synonym_map = load_synonyms(synonyms) if synonyms else {}
    if synonyms:
        digest.update(Path(synonyms).read_bytes())
    files, truths = labeled.files[:limit], labeled.objects[:limit]
    images, problems = [], []
    for name in files:
        try:
            data = read_file(resolve_inside(Path(images_dir), name))
            images.append(Image.fromarray(decode_image(data, InputLimits())))
            digest.update(hashlib.sha256(data).digest())
        except Rejected as rejected:
            problems.append(f"{name}: {rejected}")
    if problems:
        raise ValueError(f"{len(problems)} evaluation images cannot be used: {problems[:5]}")
    questions = None
    if pope_files:
        questions = [q for path in pope_files for q in load_pope_questions(path)]
        questions = [q for q in questions if q.image_id in set(files)]  # the same subset as the captions
        for path in pope_files:
            digest.update(Path(path).read_bytes())
    return EvalData(
        ids=list(files),
        images=images,
        truths=truths,
        vocab=coco_vocabulary(labeled.categories, synonym_map),
        questions=questions,
        fingerprint=digest.hexdigest(),
        source=str(instances),
    )
