"""Region support: windows, masked views, the support of objects, and chosen captions cut to it."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from si_assets.bootstrap.clip import TinyClipSpec, build_tiny_clip
from si_assets.organization.support import (
    drop_unsupported,
    grounded_consensus,
    region_support_of,
    replace_chosen,
    segment_object,
)
from si_assets.organization.verification import VerificationSettings
from si_assets.verifier.clip import ClipScorer, load_clip, save_clip
from si_assets.verifier.regions import masked_view, object_support, rank_auc, sliding_boxes
from si_assets.world import WorldSpec, decode_png, generate_split


@pytest.fixture
def scorer(tmp_path: Path) -> ClipScorer:
    torch.manual_seed(0)
    spec = TinyClipSpec()
    save_clip(build_tiny_clip(spec), spec.open_clip_config(), tmp_path)
    return ClipScorer(*load_clip(str(tmp_path)), batch_size=16)


@pytest.fixture
def images() -> list[Image.Image]:
    splits = {"seed_train": 1, "clip_train": 1, "improve": 1, "dev": 3, "test": 1}
    return [decode_png(b) for b in generate_split(WorldSpec(splits=splits), "dev")["image_png"]]


def test_sliding_boxes_cover_the_image_at_half_a_window_stride() -> None:
    boxes = sliding_boxes(48, 48, 1 / 3)
    assert len(boxes) == 25 and boxes[0] == (0, 0, 16, 16) and boxes[1] == (8, 0, 24, 16)
    assert boxes[-1] == (32, 32, 48, 48)
    covered = np.zeros((48, 48), bool)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] = True
    assert covered.all()
    # a side the stride does not divide: the last window sits flush with the edge
    assert sliding_boxes(50, 40, 0.5)[-1] == (30, 20, 50, 40)
    assert sliding_boxes(10, 10, 1.0) == [(0, 0, 10, 10)]
    with pytest.raises(ValueError, match="window"):
        sliding_boxes(48, 48, 0)


def test_masked_view_keeps_the_box_and_fills_the_rest_with_the_median() -> None:
    pixels = np.full((8, 8, 3), 10, np.uint8)
    pixels[0, 0] = 200  # one bright pixel does not move the median
    pixels[4:6, 4:6] = 90
    view = np.asarray(masked_view(Image.fromarray(pixels), (4, 4, 8, 8)))
    assert (view[4:, 4:] == pixels[4:, 4:]).all()
    assert (view[:4] == 10).all() and (view[:, :4] == 10).all()


def test_rank_auc_counts_ties_half() -> None:
    assert rank_auc([3, 4], [1, 2]) == 1.0
    assert rank_auc([1], [2]) == 0.0
    assert rank_auc([1, 2], [1, 2]) == 0.5
    assert np.isnan(rank_auc([], [1]))


def test_object_support_is_a_share_of_the_window_over_the_phrases(scorer: ClipScorer, images) -> None:
    phrases = ["a red circle.", "a blue circle.", "a green square.", "a red star."]
    objects = ["circle", "circle", "square", "star"]
    support, columns = object_support(scorer, images, phrases, objects)
    assert columns == ["circle", "square", "star"] and support.shape == (3, 3)
    assert ((support > 0) & (support <= 1)).all()
    # in each window the objects' shares sum to 1, so the best windows' shares sum to at least 1
    assert (support.sum(1) >= 1 - 1e-5).all()
    # one object's phrases take all of every window's probability
    alone, _ = object_support(scorer, images, phrases[:2], objects[:2])
    assert np.allclose(alone, 1.0)
    with pytest.raises(ValueError, match="phrases but"):
        object_support(scorer, images, phrases, objects[:2])


def test_segment_object_is_the_singular_head_noun() -> None:
    assert segment_object("a red circle") == "circle"
    assert segment_object("two blue squares") == "square"
    assert segment_object(" ") is None


def test_region_support_of_looks_segments_up_by_their_object(scorer: ClipScorer, images) -> None:
    by_id = {f"i{k}": image for k, image in enumerate(images)}
    texts = {"i0": ["a red circle and a blue square."], "i1": ["a green star."], "i2": ["a red circle."]}
    support_of = region_support_of(scorer, by_id, texts, 1 / 3)
    direct, columns = object_support(
        scorer, images, ["a blue square.", "a green star.", "a red circle."], ["square", "star", "circle"]
    )
    assert support_of("i0", "a red circle") == pytest.approx(float(direct[0, columns.index("circle")]))
    assert support_of("i0", "a yellow circle") == support_of("i0", "a red circle")  # colour does not matter
    assert support_of("i1", "a hexagon") == 1.0  # an object no response names: nothing to check


def _pairs(chosen: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(len(chosen))],
            "rank": [0] * len(chosen),
            "pair_id": [f"i{k}/0" for k in range(len(chosen))],
            "chosen": chosen,
            "rejected": ["a star."] * len(chosen),
            "score_chosen": [0.5] * len(chosen),
            "score_rejected": [0.1] * len(chosen),
            "rejected_source": ["sampled"] * len(chosen),
            "task": ["caption"] * len(chosen),
            "decision": ["kept"] * len(chosen),
        }
    )


SUPPORT = {"circle": 0.9, "square": 0.05, "star": 0.3}
CHOSEN = ["a red circle, a blue square and a green star.", "a blue square.", "a red circle."]


def _support_of(image_id: str, segment: str) -> float:
    return SUPPORT[segment_object(segment)]


def _length_score(ids, texts) -> np.ndarray:
    return np.array([len(t) / 100 for t in texts])


def test_drop_unsupported_cuts_segments_under_the_threshold_and_rescores() -> None:
    support_of, score, pairs = _support_of, _length_score, _pairs(CHOSEN)
    out = drop_unsupported(pairs, support_of, 0.2, score, "cut")
    assert out["chosen"].to_list() == ["a red circle and a green star.", "a blue square.", "a red circle."]
    assert out["unsupported_dropped"].to_list() == [1, 0, 0]  # a caption with nothing supported stays whole
    assert out["score_chosen"].to_list() == [pytest.approx(len("a red circle and a green star.") / 100), 0.5, 0.5]
    assert out["rejected"].to_list() == pairs["rejected"].to_list()
    assert drop_unsupported(pairs, support_of, 0.0, score, "cut")["chosen"].to_list() == pairs["chosen"].to_list()


def test_added_region_pairs_rank_the_cut_caption_above_the_whole_one() -> None:
    pairs = _pairs(CHOSEN)
    out = drop_unsupported(pairs, _support_of, 0.2, _length_score, "add")
    assert out.height == 4
    added, kept = out.head(1), out.tail(3)  # the added pair first: the probes restate an image's first pair
    assert kept.drop("unsupported_dropped").equals(pairs) and (kept["unsupported_dropped"] == 0).all()
    assert added.select("pair_id", "task", "rejected_source", "unsupported_dropped").row(0) == (
        "i0/0/region",
        "region",
        "region",
        1,
    )
    assert added["chosen"][0] == "a red circle and a green star." and added["rejected"][0] == CHOSEN[0]
    assert added["score_rejected"][0] == 0.5
    assert added["score_chosen"][0] == pytest.approx(len("a red circle and a green star.") / 100)
    with pytest.raises(ValueError, match="region pairs mode"):
        drop_unsupported(pairs, _support_of, 0.2, _length_score, "both")


def _samples(by_image: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(image_id, text) for image_id, texts in by_image.items() for text in texts]
    return pl.DataFrame(rows, schema=["image_id", "response"], orient="row")


def test_grounded_consensus_names_what_enough_samples_name_and_clip_finds() -> None:
    """Of four samples: the circle (4 of 4, found) stays; the square (3 of 4) is the usual partner CLIP finds
    nowhere; the star is found but named once. Each object in its most used phrase, in the samples' order."""
    samples = _samples(
        {
            "i0": [
                "a blue circle, a blue square and a green star.",
                "a red circle and a blue square.",
                "a red circle, a blue square.",
                "a red circle.",
            ],
            "i1": ["a blue square.", "a blue square.", "a blue square and a green star."],  # nothing named and found
        }
    )
    support = {"circle": 0.9, "square": 0.05, "star": 0.95}

    def support_of(image_id: str, segment: str) -> float:
        return support[segment_object(segment)]

    assert grounded_consensus(samples, support_of, 0.5, 0.5) == {"i0": "a red circle."}
    support["square"] = 0.6
    assert grounded_consensus(samples, support_of, 0.5, 0.5) == {
        "i0": "a red circle and a blue square.",
        "i1": "a blue square.",
    }
    # a quarter of the samples is enough for the star; a lower support bar keeps what 0.5 refused
    assert grounded_consensus(samples, support_of, 0.5, 0.25)["i0"] == "a red circle, a blue square and a green star."
    assert grounded_consensus(samples, support_of, 0.7, 0.25)["i0"] == "a red circle and a green star."


def test_an_object_named_twice_in_one_sample_counts_once() -> None:
    samples = _samples({"i0": ["a red circle and a blue circle.", "a star."]})
    found = grounded_consensus(samples, lambda i, s: 1.0, 0.5, 0.75)
    assert found == {}  # the circle is in 1 of 2 samples, not 2 of 2


def test_replace_chosen_counts_the_objects_a_caption_lost() -> None:
    pairs = _pairs(CHOSEN)
    new = ["a blue circle and a green star.", "a blue square.", "a red circle and a star."]
    out = replace_chosen(pairs, new, _length_score, "cut")
    assert out["chosen"].to_list() == new
    assert out["unsupported_dropped"].to_list() == [1, 0, 0]  # the square; a recoloured circle is not lost
    assert out["score_chosen"].to_list() == [pytest.approx(len(new[0]) / 100), 0.5, pytest.approx(len(new[2]) / 100)]
    added = replace_chosen(pairs, new, _length_score, "add")
    assert added.height == 5 and added.head(2)["rejected"].to_list() == [CHOSEN[0], CHOSEN[2]]


def test_region_support_needs_clip_verification() -> None:
    with pytest.raises(ValueError, match="min_region_support needs verification='clip'"):
        VerificationSettings(min_region_support=0.2, verification="none")
    with pytest.raises(ValueError, match="region_pairs"):
        VerificationSettings(min_region_support=0.2, region_pairs="both")
    assert VerificationSettings().min_region_support == 0.0  # off by default
    with pytest.raises(ValueError, match="region_caption"):
        VerificationSettings(min_region_support=0.2, region_caption="union")
    with pytest.raises(ValueError, match="region_caption='consensus' needs min_region_support"):
        VerificationSettings(region_caption="consensus")
    with pytest.raises(ValueError, match="min_sample_share"):
        VerificationSettings(min_region_support=0.2, region_caption="consensus", min_sample_share=0)
