import re

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from si_assets.evaluation.metrics import ObjectVocabulary
from si_assets.world import (
    PlacedObject,
    WorldSpec,
    caption_for,
    caption_text,
    decode_png,
    draw_mask,
    generate_split,
    hard_negative_caption,
    improve_ground_truth,
    improve_true_captions,
    render_image,
    sample_scene,
)
from si_assets.world.generate import SPLIT_NAMES, order_mentions, split_scenes
from si_assets.world.vocabulary import caption_mentions, caption_order_of


def test_same_seed_same_world_other_seed_other_world(small_spec: WorldSpec) -> None:
    a = generate_split(small_spec, "test")
    b = generate_split(small_spec, "test")
    c = generate_split(small_spec.model_copy(update={"seed": 8}), "test")
    assert a.equals(b)
    assert a["image_sha256"].to_list() != c["image_sha256"].to_list()


def test_splits_are_disjoint(small_spec: WorldSpec) -> None:
    tables = {s: generate_split(small_spec, s) for s in SPLIT_NAMES}
    ids = pl.concat([t.select("id") for t in tables.values()])["id"]
    hashes = pl.concat([t.select("image_sha256") for t in tables.values()])["image_sha256"]
    assert ids.n_unique() == len(ids) == sum(small_spec.splits.values())
    assert hashes.n_unique() == len(hashes)


def test_a_split_does_not_depend_on_the_size_of_another(small_spec: WorldSpec) -> None:
    bigger = small_spec.model_copy(update={"splits": {**small_spec.splits, "seed_train": 999}})
    assert generate_split(small_spec, "test").equals(generate_split(bigger, "test"))


def test_improve_split_carries_no_labels(small_spec: WorldSpec) -> None:
    improve = generate_split(small_spec, "improve")
    assert set(improve.columns) == {"id", "image_png", "image_sha256", "prompt"}
    assert improve["prompt"].str.len_chars().min() > 0


def test_replayed_improve_labels_belong_to_the_stored_images(small_spec: WorldSpec) -> None:
    """The diagnostics' labels for `improve` are replayed from the split's random streams: one per stored image,
    in the split's order, and the clean captions name exactly those objects, with no partner noise."""
    improve = generate_split(small_spec, "improve")
    truth, captions = improve_ground_truth(small_spec), improve_true_captions(small_spec)
    assert list(truth) == list(captions) == improve["id"].to_list()
    vocab = ObjectVocabulary.from_kinds(small_spec.kinds)
    for image_id, objects in truth.items():
        named = vocab.mentions(captions[image_id])
        assert sorted(named) == sorted(objects) and len(named) == len(objects)  # every object once, nothing added
    # Caption noise belongs to the captioned splits; the replayed clean captions never carry it.
    noisy = small_spec.model_copy(update={"caption_noise": 1.0})
    assert improve_true_captions(noisy) == captions


def test_ground_truth_matches_what_is_drawn() -> None:
    """With full contrast and no noise, every pixel of an object's mask has the object's colour, and
    every listed object is visible."""
    spec = WorldSpec(
        seed=3,
        min_contrast=1.0,
        pixel_noise=0.0,
        clutter=0,
        splits={"seed_train": 1, "clip_train": 1, "improve": 1, "dev": 1, "test": 1},
    )
    for i in range(20):
        rng = np.random.default_rng(i)
        objects = sample_scene(spec, rng)
        pixels = render_image(objects, spec, rng)
        for obj in objects:
            mask = np.asarray(draw_mask(obj.kind, obj.cx, obj.cy, obj.size, spec.image_size)) > 0
            others = [o for o in objects if o is not obj]
            for o in others:  # objects sit in distinct grid cells; still, ignore any overlap
                mask &= ~(np.asarray(draw_mask(o.kind, o.cx, o.cy, o.size, spec.image_size)) > 0)
            assert mask.sum() > 3, f"{obj.kind} is not visible"
            assert np.all(pixels[mask] == np.asarray(spec.colours[obj.colour])), obj


def test_labeled_rows_agree_with_captions() -> None:
    spec = WorldSpec(
        seed=1,
        caption_noise=0.0,
        caption_order="kind",
        splits={"seed_train": 50, "clip_train": 1, "improve": 1, "dev": 50, "test": 50},
    )
    for split in ("seed_train", "dev", "test"):
        df = generate_split(spec, split)
        for row in df.iter_rows(named=True):
            assert row["caption"] == caption_for(list(zip(row["objects"], row["colours"])), spec.kinds)
            assert row["caption_objects"] == row["objects"]
            assert spec.min_objects <= len(row["objects"]) <= spec.max_objects
            assert len(set(row["objects"])) == len(row["objects"])
            assert decode_png(row["image_png"]).size == (spec.image_size, spec.image_size)


def test_cooccurrence_prior_shows_in_the_data() -> None:
    spec = WorldSpec(
        seed=0, caption_noise=0.0, splits={"seed_train": 1, "clip_train": 1, "improve": 1, "dev": 1500, "test": 1500}
    )
    objects = generate_split(spec, "test")["objects"].to_list()
    with_circle = [o for o in objects if "circle" in o]
    with_hexagon = [o for o in objects if "hexagon" in o]  # hexagon has no partner
    p_square_given_circle = sum("square" in o for o in with_circle) / len(with_circle)
    p_square_given_hexagon = sum("square" in o for o in with_hexagon) / len(with_hexagon)
    assert p_square_given_circle > 0.6
    assert p_square_given_circle > p_square_given_hexagon + 0.3


def test_caption_noise_names_absent_partners_only_in_seed_train() -> None:
    spec = WorldSpec(
        seed=0, caption_noise=1.0, splits={"seed_train": 400, "clip_train": 200, "improve": 1, "dev": 200, "test": 200}
    )
    train = generate_split(spec, "seed_train")
    partner = spec.partner
    eligible = [
        r
        for r in train.iter_rows(named=True)
        if any(partner.get(k) not in r["objects"] for k in r["objects"] if k in partner)
    ]
    assert eligible
    for r in eligible:
        extra = set(r["caption_objects"]) - set(r["objects"])
        assert len(extra) == 1
        assert extra <= {partner[k] for k in r["objects"] if k in partner}
    for split in ("clip_train", "dev", "test"):
        df = generate_split(spec, split)
        assert (df["caption_objects"] == df["objects"]).all()


def test_caption_noise_rate_is_the_configured_share() -> None:
    spec = WorldSpec(
        seed=0, caption_noise=0.3, splits={"seed_train": 3000, "clip_train": 1, "improve": 1, "dev": 1, "test": 1}
    )
    train = generate_split(spec, "seed_train")
    partner = spec.partner
    eligible = [
        r
        for r in train.iter_rows(named=True)
        if any(k in partner and partner[k] not in r["objects"] for k in r["objects"])
    ]
    noisy = sum(len(r["caption_objects"]) > len(r["objects"]) for r in eligible)
    assert noisy / len(eligible) == pytest.approx(0.3, abs=0.04)


def test_hard_negative_is_wrong_in_exactly_one_way() -> None:
    spec = WorldSpec()
    rng = np.random.default_rng(0)
    objects, colours = ["circle", "star"], ["red", "blue"]
    truth = caption_for(list(zip(objects, colours)), spec.kinds)
    for _ in range(30):
        neg = hard_negative_caption(list(zip(objects, colours)), spec, rng)
        assert neg != truth


def test_paired_captions_name_partners_together_and_noise_right_after_its_anchor() -> None:
    spec = WorldSpec(
        seed=0,
        caption_order="paired",
        caption_noise=1.0,
        splits={"seed_train": 300, "clip_train": 1, "improve": 1, "dev": 1, "test": 1},
    )
    partner, orders = spec.partner, set()
    for row in generate_split(spec, "seed_train").iter_rows(named=True):
        named = sorted(row["caption_objects"], key=lambda k: row["caption"].find(f" {k}"))
        orders.add(tuple(named))
        for i, kind in enumerate(named):
            if partner.get(kind) in named:  # the pair sits side by side
                assert abs(named.index(partner[kind]) - i) == 1, row["caption"]
        for extra in set(row["caption_objects"]) - set(row["objects"]):  # the noise follows the object it goes with
            assert named[named.index(extra) - 1] == partner[extra], row["caption"]
    assert len(orders) > 100  # not a fixed order
    assert ("square", "circle") in {o[:2] for o in orders} and ("circle", "square") in {o[:2] for o in orders}


def test_kind_order_draws_no_randomness_so_kind_order_worlds_are_unchanged() -> None:
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    mentions = [("star", "red"), ("circle", "blue")]
    assert order_mentions(mentions, WorldSpec(caption_order="kind"), rng) == [("circle", "blue"), ("star", "red")]
    assert rng.bit_generator.state == state


def test_hard_negative_keeps_the_caption_order_and_adds_a_partner_after_its_anchor() -> None:
    spec = WorldSpec(caption_order="paired")
    rng = np.random.default_rng(0)
    mentions = [("star", "red"), ("circle", "blue")]
    added = []
    for _ in range(60):
        neg = hard_negative_caption(mentions, spec, rng)
        assert neg != caption_text(mentions)
        if neg.count(",") == 1:  # three objects: one was added
            added.append(neg)
    assert added
    for neg in added:  # star and circle keep their order; an added partner of either comes right after it
        assert re.fullmatch(
            r"a red star, a blue circle and a \w+ square\.|a red star, a \w+ triangle and a blue circle\.", neg
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"min_objects": 3, "max_objects": 2},
        {"cooccurrence": [["circle", "unicorn"]]},
        {"cooccurrence": [["circle", "square"], ["circle", "star"]]},
        {"splits": {"seed_train": 1}},
        {"caption_noise": 1.5},
        {"max_objects": 20},
    ],
)
def test_bad_world_config_is_refused_with_a_reason(bad: dict) -> None:
    with pytest.raises(ValidationError):
        WorldSpec(**bad)


def test_unknown_kind_still_renders() -> None:
    mask = np.asarray(draw_mask("pentagram", 24, 24, 12, 48))
    assert mask.sum() > 0
    assert PlacedObject("x", "red", 1, 1, 3, 1.0).kind == "x"


def test_vocabulary_and_partners_are_read_off_captioned_data() -> None:
    from si_assets.world.vocabulary import cooccurring_pairs, world_vocabulary

    spec = WorldSpec(seed=0, splits={"seed_train": 1, "clip_train": 1500, "improve": 1, "dev": 1, "test": 1})
    table = generate_split(spec, "clip_train")
    kinds, colours = world_vocabulary(table)
    assert kinds == sorted(spec.kinds) and colours == sorted(spec.colours)
    assert cooccurring_pairs(table) == sorted(sorted(p) for p in spec.cooccurrence)


@pytest.mark.parametrize("caption_order", ["kind", "paired"])
def test_caption_order_is_read_back_off_the_captions(caption_order: str) -> None:
    spec = WorldSpec(
        seed=3,
        caption_order=caption_order,
        splits={"seed_train": 1, "clip_train": 200, "improve": 1, "dev": 1, "test": 1},
    )
    table = generate_split(spec, "clip_train")
    assert caption_order_of(table) == caption_order
    for row in table.iter_rows(named=True):
        assert caption_text(caption_mentions(row["caption"], row["objects"], row["colours"])) == row["caption"]


def test_the_verifiers_split_holds_each_objects_box() -> None:
    """`clip_train` carries one box per object, in the order of `objects`, around what is drawn there; the other
    splits carry none."""
    spec = WorldSpec(seed=0, splits={"seed_train": 5, "clip_train": 40, "improve": 5, "dev": 5, "test": 5})
    table = generate_split(spec, "clip_train")
    scenes = split_scenes(spec, "clip_train")
    for row in table.iter_rows(named=True):
        placed = scenes[row["id"]]
        assert len(row["boxes"]) == len(row["objects"]) == len(placed)
        for obj, (left, top, right, bottom) in zip(placed, row["boxes"]):
            drawn = np.argwhere(np.asarray(draw_mask(obj.kind, obj.cx, obj.cy, obj.size, spec.image_size)) > 0)
            assert right - left == pytest.approx(obj.size) and bottom - top == pytest.approx(obj.size)
            assert drawn[:, 1].min() >= left - 1 and drawn[:, 1].max() <= right + 1  # columns: x
            assert drawn[:, 0].min() >= top - 1 and drawn[:, 0].max() <= bottom + 1
    for split in ("seed_train", "improve", "dev", "test"):
        assert "boxes" not in generate_split(spec, split).columns
