"""What an evaluation runs on (Dagster-free): the embedded world's `eval` split, a COCO-format set (images folder,
`instances_*.json`, optional human captions, CHAIR synonyms and POPE question files), or the user's copy of AMBER
(its files and images folder, split into dev and test by image)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from PIL import Image
from pydantic import Field, model_validator

from si_assets.collection.validation import InputLimits, Rejected, decode_image, read_file, resolve_inside
from si_assets.evaluation.amber import ANNOTATIONS, QUERIES, RELATION, SAFE_WORDS, Amber, load_amber, split_of
from si_assets.evaluation.chair import ChairVariant
from si_assets.evaluation.coco import load_chair, load_coco_captions, load_coco_instances, load_pope_questions
from si_assets.evaluation.metrics import MentionFinder, ObjectVocabulary, PopeQuestion
from si_assets.settings import Settings
from si_assets.storage import content_hash
from si_assets.world import EVAL_PROMPT, decode_png
from si_assets.world.vocabulary import world_vocabulary

Split = Literal["dev", "test"]


_CAPTIONS = (
    "{split} split: captions_*.json (COCO format, optional); objects its human captions name count as present, "
    "as CHAIR's ground truth has it"
)


class EvalSettings(Settings):
    """The evaluation step: the held-out `dev` split (defaults, promotion gate) and `test` split (reported only),
    the prompts and how many POPE questions."""

    source: Literal["world", "coco", "amber"] = Field(
        "world",
        description="'coco': the coco_* files below, one set per split; 'amber': the user's AMBER files (amber_dir, "
        "amber_images), its images split into dev and test by a hash of their names",
    )
    coco_dev_instances: str | None = Field(None, description="dev split: instances_*.json (COCO format)")
    coco_dev_captions: str | None = Field(None, description=_CAPTIONS.format(split="dev"))
    coco_dev_images: str | None = Field(None, description="dev split: the folder the instances' file_names are in")
    coco_dev_pope_files: list[str] = Field(default_factory=list, description="dev split: POPE question files")
    coco_test_instances: str | None = Field(None, description="test split: instances_*.json (COCO format)")
    coco_test_captions: str | None = Field(None, description=_CAPTIONS.format(split="test"))
    coco_test_images: str | None = Field(None, description="test split: the folder the instances' file_names are in")
    coco_test_pope_files: list[str] = Field(default_factory=list, description="test split: POPE question files")
    coco_synonyms: str | None = Field(None, description="CHAIR's synonyms.txt (optional)")
    amber_dir: str | None = Field(
        None,
        description="AMBER's folder as its repository lays it out: data/annotations.json, data/relation.json, "
        "data/safe_words.txt, data/query/query_all.json",
    )
    amber_images: str | None = Field(None, description="the folder of AMBER's images (AMBER_1.jpg, ...)")
    chair_variant: ChairVariant = Field(
        "reference",
        description="CHAIR on COCO data: 'reference' follows the published implementation, quirks included, so "
        "numbers compare with published CHAIR; 'corrected' applies the same rules without them (docs/metrics.md)",
    )
    max_images: int | None = Field(
        None, ge=1, description="evaluate the first N images of each split only (on AMBER with their questions)"
    )
    caption_prompt: str = Field(EVAL_PROMPT, description="the description prompt (AMBER's items bring their own)")
    pope_per_image: int = Field(2, ge=0, description="present objects asked per image when no POPE file is given")
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    seed: int = Field(0, ge=0, description="POPE question sampling; the same in every round, so rounds compare")

    @model_validator(mode="after")
    def _files_complete(self) -> EvalSettings:
        if self.source == "amber":
            missing = [name for name in ("amber_dir", "amber_images") if not getattr(self, name)]
            if missing:
                raise ValueError(f"source 'amber' needs its files: set {', '.join(missing)}")
        if self.source == "coco":
            missing = [
                f"coco_{split}_{part}"
                for split in ("dev", "test")
                for part in ("instances", "images")
                if not getattr(self, f"coco_{split}_{part}")
            ]
            if missing:
                raise ValueError(f"source 'coco' needs a dev and a test set: set {', '.join(missing)}")
            if Path(self.coco_dev_instances).resolve() == Path(self.coco_test_instances).resolve():
                raise ValueError("the dev and test sets must differ: the test split is never used for a choice")
        return self

    def metrics_key(self) -> str:
        """What determines a checkpoint's metrics besides the data itself (whose fingerprint is keyed apart)."""
        return self.model_dump_json(include={"caption_prompt", "pope_per_image", "max_new_tokens", "seed"})

    def data(self, split: Split, world_split: pl.DataFrame) -> EvalData:
        """The `split`'s images, ground truth and questions: the world's split table, the COCO set, or AMBER's."""
        if self.source == "world":
            return world_eval_data(world_split.head(self.max_images) if self.max_images else world_split, split)
        if self.source == "amber":
            return amber_eval_data(self.amber_dir, self.amber_images, split, self.max_images)
        return coco_eval_data(
            getattr(self, f"coco_{split}_instances"),
            getattr(self, f"coco_{split}_images"),
            self.coco_synonyms,
            getattr(self, f"coco_{split}_pope_files"),
            self.max_images,
            getattr(self, f"coco_{split}_captions"),
            self.chair_variant,
        )


@dataclass(frozen=True)
class EvalData:
    ids: list[str]
    images: list[Image.Image]
    truths: list[list[str]]  # objects present, per image: what captions are scored against
    vocab: MentionFinder
    questions: list[PopeQuestion] | None  # None: built from `annotated`
    fingerprint: str  # changes when any image, label, caption, synonym, question or the CHAIR variant changes
    source: str
    annotated: list[list[str]]  # the annotations alone (POPE's questions come from them)
    chair_variant: ChairVariant | None = None  # None: the world's metric, each object once per caption, or AMBER's
    amber: Amber | None = None  # AMBER's items of these images: scored as AMBER scores them


def world_eval_data(world_eval: pl.DataFrame, split: str = "test") -> EvalData:
    return EvalData(
        ids=world_eval["id"].to_list(),
        images=[decode_png(b) for b in world_eval["image_png"]],
        truths=world_eval["objects"].to_list(),
        vocab=ObjectVocabulary.from_kinds(world_vocabulary(world_eval)[0]),
        questions=None,
        fingerprint=content_hash(world_eval),
        source=f"world:{split}",
        annotated=world_eval["objects"].to_list(),
    )


def coco_eval_data(
    instances: str | Path,
    images_dir: str | Path,
    synonyms: str | Path | None = None,
    pope_files: Sequence[str | Path] = (),
    limit: int | None = None,
    captions: str | Path | None = None,
    chair_variant: ChairVariant = "reference",
) -> EvalData:
    """The first `limit` annotated images (all by default). Every image must be readable: an evaluation set with
    holes would not compare with published numbers, so a bad file is an error that names it. Captions are scored
    with CHAIR (`chair_variant`) against the annotations plus the objects the human `captions` name."""
    labeled = load_coco_instances(instances)
    chair = load_chair(synonyms, labeled.categories, chair_variant)
    files, annotated = labeled.files[:limit], labeled.objects[:limit]
    human = load_coco_captions(captions, labeled.ids[:limit]) if captions else [[] for _ in files]
    digest = hashlib.sha256(f"chair:{chair_variant}\n".encode())
    digest.update("\n".join(files).encode())  # which images, by name
    for path in (instances, synonyms, captions):
        if path:
            digest.update(Path(path).read_bytes())
    images = read_images(images_dir, files, digest)
    questions = None
    if pope_files:
        questions = [q for path in pope_files for q in load_pope_questions(path)]
        questions = [q for q in questions if q.image_id in set(files)]  # the same subset as the captions
        for path in pope_files:
            digest.update(Path(path).read_bytes())
    return EvalData(
        ids=list(files),
        images=images,
        truths=[sorted(chair.ground_truth(objects, said)) for objects, said in zip(annotated, human)],
        vocab=chair,
        questions=questions,
        fingerprint=digest.hexdigest(),
        source=str(instances),
        annotated=[sorted(chair.ground_truth(objects)) for objects in annotated],
        chair_variant=chair_variant,
    )


def read_images(folder: str | Path, names: Sequence[str], digest: hashlib._Hash) -> list[Image.Image]:
    """The named images of `folder`, each one's bytes added to `digest`. Every image must be readable: an evaluation
    set with holes would not compare with published numbers, so a bad file is an error that names it."""
    images, problems = [], []
    for name in names:
        try:
            data = read_file(resolve_inside(Path(folder), name))
            images.append(Image.fromarray(decode_image(data, InputLimits())))
            digest.update(hashlib.sha256(data).digest())
        except Rejected as rejected:
            problems.append(f"{name}: {rejected}")
    if problems:
        raise ValueError(f"{len(problems)} evaluation images cannot be used: {problems[:5]}")
    return images


def amber_eval_data(folder: str | Path, images_dir: str | Path, split: Split, limit: int | None = None) -> EvalData:
    """AMBER's images of one split (`amber.split_of`), the first `limit` of them in AMBER's id order, with their
    description queries and yes/no questions."""
    amber = load_amber(folder)
    names = [image for image in amber.images if split_of(image) == split][:limit]
    chosen = amber.select(names)
    if not chosen.descriptions or not chosen.questions:
        raise ValueError(f"{folder}: no AMBER images with yes/no questions in the {split} split")
    digest = hashlib.sha256(f"amber:{split}\n".encode())
    digest.update("\n".join(names).encode())  # which images, by name
    for name in (ANNOTATIONS, RELATION, SAFE_WORDS, QUERIES):
        digest.update(Path(folder, name).read_bytes())
    images = read_images(images_dir, names, digest)
    truths = [list(d.truth) for d in chosen.descriptions]
    return EvalData(
        ids=names,
        images=images,
        truths=truths,
        vocab=chosen.words,
        questions=None,
        fingerprint=digest.hexdigest(),
        source=str(folder),
        annotated=truths,
        amber=chosen,
    )
