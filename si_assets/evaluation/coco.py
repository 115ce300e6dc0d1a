"""Real evaluation data (Dagster-free): COCO-format instance annotations, CHAIR's synonym list and POPE's
published question files, turned into what the metrics take (object lists per image, a vocabulary, questions).

- `instances_*.json`: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "category_id"}],
  "categories": [{"id", "name"}]}; an image's objects are its annotations' category names.
- CHAIR's `synonyms.txt`: one object per line, comma-separated, the COCO category first, then its surface
  forms ("person, girl, boy, man, ..."); categories without a line match by their name only.
- POPE's question files (`coco_pope_{random,popular,adversarial}.json`), one JSON object per line:
  {"question_id", "image", "text": "Is there a snowboard in the image?", "label": "yes" | "no"}.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from si_assets.evaluation.metrics import POPE_STRATEGIES, ObjectVocabulary, PopeQuestion

_POPE_OBJECT = re.compile(r"^is there an? (.+?) in the (?:image|picture)\?*$", re.IGNORECASE)


@dataclass(frozen=True)
class LabeledImages:
    files: list[str]  # file_name per image, in the annotation file's order
    objects: list[list[str]]  # sorted distinct category names per image
    categories: list[str]  # every category, in id order


def load_coco_instances(path: str | Path) -> LabeledImages:
    data = json.loads(Path(path).read_text())
    missing = {"images", "annotations", "categories"} - set(data)
    if missing:
        raise ValueError(f"{path} is not COCO instances format: no {sorted(missing)}")
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
        files=list(images.values()),
        objects=[sorted(objects[i]) for i in images],
        categories=list(categories.values()),
    )


def load_synonyms(path: str | Path) -> dict[str, list[str]]:
    synonyms: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        forms = [f.strip() for f in line.split(",") if f.strip()]
        if not forms:
            continue
        canonical, rest = forms[0], forms[1:]
        if canonical in synonyms:
            raise ValueError(f"{path}:{number}: {canonical!r} has a line already")
        synonyms[canonical] = list(dict.fromkeys(f for f in rest if f != canonical))  # CHAIR repeats some
    return synonyms


def coco_vocabulary(categories: list[str], synonyms: dict[str, list[str]] | None = None) -> ObjectVocabulary:
    """Every category, with its synonyms where the list has them; a synonym line for a category the annotations
    do not have is an error (the two files do not belong together)."""
    synonyms = synonyms or {}
    unknown = sorted(set(synonyms) - set(categories))
    if unknown:
        raise ValueError(f"synonyms for categories the annotations do not have: {unknown[:5]}")
    return ObjectVocabulary({c: synonyms.get(c, []) for c in categories})


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
        row = json.loads(line)
        match = _POPE_OBJECT.match(row["text"].strip())
        if match is None:
            raise ValueError(f"{path.name}:{number}: not a POPE question: {row['text']!r}")
        if row["label"] not in ("yes", "no"):
            raise ValueError(f"{path.name}:{number}: label must be 'yes' or 'no', got {row['label']!r}")
        questions.append(PopeQuestion(row["image"], match.group(1).lower(), row["label"] == "yes", strategy))
    return questions
