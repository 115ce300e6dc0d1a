"""What an evaluation runs on (Dagster-free): the embedded world's `eval` split, or a COCO-format set (images
folder, `instances_*.json`, optional CHAIR synonyms and POPE question files)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image

from si_assets.collection.validation import InputLimits, Rejected, decode_image, read_file, resolve_inside
from si_assets.evaluation.coco import coco_vocabulary, load_coco_instances, load_pope_questions, load_synonyms
from si_assets.evaluation.metrics import ObjectVocabulary, PopeQuestion
from si_assets.storage import content_hash
from si_assets.world import decode_png
from si_assets.world.vocabulary import world_vocabulary


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
