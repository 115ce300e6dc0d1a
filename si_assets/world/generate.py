"""Sampling scenes, captions and the five disjoint splits of the embedded world.

Every image is drawn from its own child seed of (world seed, split), so a split is reproducible on its
own and splits never share a random stream.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from si_assets.world.render import PlacedObject, encode_png, render_image
from si_assets.world.spec import WorldSpec

CAPTION_PROMPTS = ["Describe the image.", "What objects are in the picture?", "List the objects you see."]
EVAL_PROMPT = CAPTION_PROMPTS[0]
SPLIT_NAMES = ("seed_train", "clip_train", "improve", "dev", "test")
EVAL_SPLITS = ("dev", "test")  # dev: defaults and the promotion gate; test: reported, never a choice
# Captioned splits carry ground truth; `improve` is the unlabeled pool the loop may read.
LABELED_SPLITS = ("seed_train", "clip_train", "dev", "test")
GROUNDED_SPLIT = "clip_train"  # the verifier's training data also holds each object's box


def sample_scene(spec: WorldSpec, rng: np.random.Generator) -> list[PlacedObject]:
    """Unique kinds per image; an anchor pulls its co-occurrence partner in with `cooccurrence_strength`."""
    n_target = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    partner = spec.partner
    kinds: list[str] = []
    while len(kinds) < n_target:
        free = [k for k in spec.kinds if k not in kinds]
        kind = free[int(rng.integers(len(free)))]
        kinds.append(kind)
        mate = partner.get(kind)
        if mate and mate not in kinds and len(kinds) < n_target and rng.random() < spec.cooccurrence_strength:
            kinds.append(mate)

    cell = spec.image_size / spec.grid
    cells = rng.permutation(spec.grid**2)[: len(kinds)]
    colour_names = list(spec.colours)
    objects = []
    for kind, c in zip(kinds, cells):
        size = float(rng.uniform(spec.min_object_size, spec.max_object_size))
        slack = max(0.0, (cell - size) / 2)
        cx = (c % spec.grid + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (c // spec.grid + 0.5) * cell + rng.uniform(-slack, slack)
        objects.append(
            PlacedObject(
                kind=kind,
                colour=colour_names[int(rng.integers(len(colour_names)))],
                cx=float(cx),
                cy=float(cy),
                size=size,
                contrast=float(rng.uniform(spec.min_contrast, 1.0)),
            )
        )
    return objects


Mention = tuple[str, str]  # (kind, colour)


def in_kind_order(mentions: list[Mention], kind_order: list[str]) -> list[Mention]:
    return sorted(mentions, key=lambda m: kind_order.index(m[0]))


def caption_for(mentions: list[Mention], kind_order: list[str]) -> str:
    """'a red circle, a blue square and a green star.' — objects in a fixed kind order."""
    return caption_text(in_kind_order(mentions, kind_order))


def caption_text(ordered: list[Mention]) -> str:
    """The caption of mentions in the order given."""
    phrases = [f"a {colour} {kind}" for kind, colour in ordered]
    if len(phrases) == 1:
        return phrases[0] + "."
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] + "."


def order_mentions(mentions: list[Mention], spec: WorldSpec, rng: np.random.Generator) -> list[Mention]:
    """The world's caption convention (`caption_order`). `paired` draws a random order in which an object's
    co-occurrence partner, when mentioned, comes right after it; `kind` draws nothing (a fixed order)."""
    if spec.caption_order == "kind":
        return in_kind_order(mentions, spec.kinds)
    units: list[list[Mention]] = []
    for i in rng.permutation(len(mentions)):
        mention = mentions[int(i)]
        unit = next((u for u in units if spec.partner.get(u[0][0]) == mention[0]), None)
        if unit is None:
            units.append([mention])
        else:
            unit.append(mention)
    return [m for unit in units for m in unit]


def add_mention(ordered: list[Mention], extra: Mention, spec: WorldSpec) -> list[Mention]:
    """`ordered` with one more mention where the convention puts it: at its kind's place, or (paired) right
    after its co-occurrence partner, else last."""
    if spec.caption_order == "kind":
        return in_kind_order([*ordered, extra], spec.kinds)
    anchors = [i for i, (kind, _) in enumerate(ordered) if spec.partner.get(kind) == extra[0]]
    at = anchors[0] + 1 if anchors else len(ordered)
    return [*ordered[:at], extra, *ordered[at:]]


def absent_partner_mention(objects: list[PlacedObject], spec: WorldSpec, rng: np.random.Generator) -> Mention | None:
    """With probability `caption_noise`, an image whose anchor lacks its partner gets the partner named
    anyway (a random colour): the web-caption habit that makes models hallucinate the usual companion."""
    present = {o.kind for o in objects}
    absent_partners = sorted({spec.partner[k] for k in present if k in spec.partner} - present)
    if absent_partners and rng.random() < spec.caption_noise:
        mate = absent_partners[int(rng.integers(len(absent_partners)))]
        colours = list(spec.colours)
        return mate, colours[int(rng.integers(len(colours)))]
    return None


def object_box(obj: PlacedObject) -> list[float]:
    """The square an object is drawn in, (left, top, right, bottom) in pixels."""
    r = obj.size / 2
    return [obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r]


def _split_seed(spec: WorldSpec, split: str) -> np.random.SeedSequence:
    # A stable integer per split name (Python's hash() is salted per process).
    salt = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    return np.random.SeedSequence([spec.seed, salt])


def generate_split(spec: WorldSpec, split: str) -> pl.DataFrame:
    """One split as a table. Labeled splits carry `objects` (ground truth, kind order), `colours`, and a
    `caption`; `clip_train` also each object's box, as a grounding data set gives them (the verifier may train on
    objects alone); `improve` carries only the image and a prompt — the loop never sees a label."""
    if split not in spec.splits:
        raise KeyError(f"unknown split {split!r}; configured: {sorted(spec.splits)}")
    n = spec.splits[split]
    children = _split_seed(spec, split).spawn(n)
    rows = []
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        objects = sample_scene(spec, rng)
        png = encode_png(render_image(objects, spec, rng))
        row: dict = {"id": f"{split}-{i:06d}", "image_png": png, "image_sha256": hashlib.sha256(png).hexdigest()}
        if split == "improve":
            row["prompt"] = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        else:
            ordered = sorted(objects, key=lambda o: spec.kinds.index(o.kind))
            row["objects"] = [o.kind for o in ordered]
            row["colours"] = [o.colour for o in ordered]
            noise = absent_partner_mention(objects, spec, rng) if split == "seed_train" else None
            mentions = order_mentions([(o.kind, o.colour) for o in objects], spec, rng)
            if noise is not None:
                mentions = add_mention(mentions, noise, spec)
            row["caption"] = caption_text(mentions)
            row["caption_objects"] = sorted({k for k, _ in mentions}, key=spec.kinds.index)
            if split == GROUNDED_SPLIT:
                row["boxes"] = [object_box(o) for o in ordered]
        rows.append(row)
    return pl.DataFrame(rows)


def split_scenes(spec: WorldSpec, split: str) -> dict[str, list[PlacedObject]]:
    """The objects of each image of `split` in kind order, with their places, replayed from the split's random
    streams (a table holds the kinds, not where they are)."""
    children = _split_seed(spec, split).spawn(spec.splits[split])
    return {
        f"{split}-{i:06d}": sorted(
            sample_scene(spec, np.random.default_rng(child)), key=lambda o: spec.kinds.index(o.kind)
        )
        for i, child in enumerate(children)
    }


def _improve_scenes(spec: WorldSpec) -> dict[str, list[PlacedObject]]:
    return split_scenes(spec, "improve")


def improve_ground_truth(spec: WorldSpec) -> dict[str, list[str]]:
    """The objects in each `improve` image. For benchmarks and diagnostics only: the loop itself never reads them."""
    return {image_id: [o.kind for o in objects] for image_id, objects in _improve_scenes(spec).items()}


def improve_true_captions(spec: WorldSpec) -> dict[str, str]:
    """The clean caption of each `improve` image (every object, right colours, no partner noise). For diagnostics
    only: what training on perfect chosen responses would reach."""
    rng = np.random.default_rng(spec.seed)  # the order of a `paired` caption is arbitrary; any draw will do
    return {
        image_id: caption_text(order_mentions([(o.kind, o.colour) for o in objects], spec, rng))
        for image_id, objects in _improve_scenes(spec).items()
    }


def generate_world(spec: WorldSpec) -> dict[str, pl.DataFrame]:
    return {split: generate_split(spec, split) for split in SPLIT_NAMES}


def hard_negative_caption(mentions: list[Mention], spec: WorldSpec, rng: np.random.Generator) -> str:
    """A caption that is wrong in one way a hallucinating captioner is wrong: an absent object added
    (the co-occurrence partner when there is one), one object's kind replaced, or one colour changed.
    `mentions` come in the true caption's order, which the negative keeps."""
    mentions = list(mentions)
    objects = [kind for kind, _ in mentions]
    absent = [k for k in spec.kinds if k not in objects]
    partners = [spec.partner[k] for k in objects if k in spec.partner and spec.partner[k] in absent]
    colour_names = list(spec.colours)
    move = rng.integers(3)
    if (move == 0 or len(objects) == len(spec.kinds)) and len(colour_names) > 1:
        i = int(rng.integers(len(mentions)))
        others = [c for c in colour_names if c != mentions[i][1]]
        mentions[i] = (mentions[i][0], others[int(rng.integers(len(others)))])
    elif move == 1 and absent:
        i = int(rng.integers(len(mentions)))
        mentions[i] = (absent[int(rng.integers(len(absent)))], mentions[i][1])
    elif absent:
        pool = partners or absent
        extra = (pool[int(rng.integers(len(pool)))], colour_names[int(rng.integers(len(colour_names)))])
        mentions = add_mention(mentions, extra, spec)
    return caption_for(mentions, spec.kinds) if spec.caption_order == "kind" else caption_text(mentions)
