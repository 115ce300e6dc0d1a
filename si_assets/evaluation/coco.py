"""Real evaluation data (Dagster-free): COCO-format instance annotations and human captions, CHAIR's synonym list
and POPE's published question files, turned into what the metrics take (object lists per image, a CHAIR object
finder, questions).

- `instances_*.json`: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "category_id"}],
  "categories": [{"id", "name"}]}; an image's objects are its annotations' category names.
- `captions_*.json`: {"images": [{"id", ...}], "annotations": [{"image_id", "caption"}]}: the human captions, whose
  objects CHAIR counts as present too.
- CHAIR's `synonyms.txt`: one object per line, comma-separated, the COCO category first, then its surface
  forms ("person, girl, boy, man, ..."); categories without a line match by their name only.
- POPE's question files (`coco_pope_{random,popular,adversarial}.json`), one JSON object per line:
  {"question_id", "image", "text": "Is there a snowboard in the image?", "label": "yes" | "no"}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from si_assets.evaluation.chair import Chair, ChairVariant, parse_synonyms
from si_assets.evaluation.metrics import POPE_STRATEGIES, PopeQuestion

_POPE_OBJECT = re.compile(r"^is there an? (.+?) in the (?:image|picture)\?*$", re.IGNORECASE)


def read_json(path: str | Path, what: str, keys: Sequence[str] = ()) -> Any:
    """A JSON object with `keys` (any JSON value when none are asked for), or an error that names the file and what
    is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    missing = sorted(set(keys) - set(data)) if isinstance(data, dict) else sorted(keys)
    if missing:
        raise ValueError(f"{path} is not COCO {what} format: no {missing}")
    return data


@dataclass(frozen=True)
class LabeledImages:
    ids: list[int]  # COCO image id per image, in the annotation file's order
    files: list[str]  # file_name per image
    objects: list[list[str]]  # sorted distinct category names per image
    categories: list[str]  # every category, in id order


def load_coco_instances(path: str | Path) -> LabeledImages:
    data = read_json(path, "instances", ("images", "annotations", "categories"))
    categories = {c["id"]: c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])}
    images = {i["id"]: i["file_name"] for i in data["images"]}
    objects: dict[int, set[str]] = {i: set() for i in images}
    for ann in data["annotations"]:
        if ann["image_id"] not in images:
            raise ValueError(f"{path}: annotation {ann.get('id')} names unknown image {ann['image_id']}")
        if ann["category_id"] not in categories:
            raise ValueError(f"{path}: annotation {ann.get('id')} names unknown category {ann['category_id']}")
        objects[ann["image_id"]].add(categories[ann["category_id"]])
    return LabeledImages(
        ids=list(images),
        files=list(images.values()),
        objects=[sorted(objects[i]) for i in images],
        categories=list(categories.values()),
    )


def load_coco_captions(path: str | Path, image_ids: Sequence[int]) -> list[list[str]]:
    """The human captions of each of `image_ids`, in that order. Captions of other images are left out (a
    captions file usually covers a whole COCO split); an image of `image_ids` without a caption means the file
    belongs to another split, and a caption of an image the file does not list means it is broken: both are
    errors."""
    data = read_json(path, "captions", ("annotations",))
    listed = None
    if "images" in data:
        if not all(isinstance(image, dict) and "id" in image for image in data["images"]):
            raise ValueError(f"{path}: every entry of 'images' needs an id")
        listed = {image["id"] for image in data["images"]}
    wanted: dict[int, list[str]] = {image_id: [] for image_id in image_ids}
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise ValueError(f"{path}: annotation {number} needs an image_id and a caption string")
        if listed is not None and ann["image_id"] not in listed:
            raise ValueError(f"{path}: caption {ann.get('id', number)} names unknown image {ann['image_id']}")
        if ann["image_id"] in wanted:
            wanted[ann["image_id"]].append(ann["caption"])
    uncaptioned = [image_id for image_id, captions in wanted.items() if not captions]
    if uncaptioned:
        raise ValueError(
            f"{path} has no caption for {len(uncaptioned)} of the {len(wanted)} evaluated images "
            f"(e.g. image ids {uncaptioned[:5]}): is it the captions file of the same images?"
        )
    return list(wanted.values())


def load_chair(synonyms: str | Path | None, categories: Sequence[str], variant: ChairVariant = "reference") -> Chair:
    """CHAIR's object finder for these categories: their lines of `synonyms` (CHAIR's synonyms.txt), and each
    category without a line by its name alone. A line for a category the annotations do not have means the two
    files do not belong together; two lines for one category, that the list is broken: both are errors."""
    lines = parse_synonyms(Path(synonyms).read_text(), variant) if synonyms else []
    heads = [line[0] for line in lines]
    repeated = sorted({head for head in heads if heads.count(head) > 1})
    if repeated:
        raise ValueError(f"{synonyms}: {repeated[0]!r} has a line already")
    unknown = sorted(set(heads) - set(categories))
    if unknown:
        raise ValueError(f"{synonyms}: synonyms for categories the annotations do not have: {unknown[:5]}")
    lines += [[category] for category in categories if category not in heads]
    return Chair(lines, variant, objects=categories)


def load_pope_questions(path: str | Path, strategy: str | None = None) -> list[PopeQuestion]:
    """Questions of one POPE file; the strategy comes from the file name (`..._random.json`) unless given."""
    path = Path(path)
    strategy = strategy or next((s for s in POPE_STRATEGIES if path.stem.endswith(s)), None)
    if strategy not in POPE_STRATEGIES:
        raise ValueError(f"{path.name}: say which POPE strategy it holds ({', '.join(POPE_STRATEGIES)})")
    questions = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name}:{number}: not valid JSON: {exc}") from None
        match = _POPE_OBJECT.match(row["text"].strip())
        if match is None:
            raise ValueError(f"{path.name}:{number}: not a POPE question: {row['text']!r}")
        if row["label"] not in ("yes", "no"):
            raise ValueError(f"{path.name}:{number}: label must be 'yes' or 'no', got {row['label']!r}")
        questions.append(PopeQuestion(row["image"], match.group(1).lower(), row["label"] == "yes", strategy))
    return questions
