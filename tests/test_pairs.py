"""Collection plan and pair organization: ratios, seeds, the reverse/discard rule, baselines."""

import numpy as np
import polars as pl
import pytest

from bench.prior_swaps import continuation_points, prior_swap_edit, prior_swap_edits, prior_swapped_responses
from si_assets.collection.sampling import (
    NEGATIVE,
    POSITIVE,
    HallucinationRatios,
    draw_ratios,
    plan_requests,
    stable_seed,
)
from si_assets.organization.composition import compose_by_verifier, composed_responses
from si_assets.organization.probes import PROBE, mentioned_objects
from si_assets.organization.segments import (
    join_segments,
    segment_positions,
    segment_spans,
    segment_votes,
    swapped_responses,
)
from si_assets.organization.verification import (
    DISCARDED,
    KEPT,
    REVERSED,
    PairRule,
    VerificationSettings,
    decide,
    decision_counts,
    organize_pairs,
    swap_negatives,
    training_pairs,
)


def _images(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"img-{i}" for i in range(n)], "prompt": ["Describe the image."] * n})


def test_reverse_and_discard_rule() -> None:
    pos = np.array([0.30, 0.20, 0.25, 0.10, 0.60])
    neg = np.array([0.10, 0.35, 0.24, 0.10, 0.45])
    assert decide(pos, neg, margin=0.0).tolist() == [KEPT, REVERSED, KEPT, KEPT, KEPT]
    # a near tie is discarded whichever way it leans; an exact tie too once margin > 0
    assert decide(pos, neg, margin=0.05).tolist() == [KEPT, REVERSED, DISCARDED, DISCARDED, KEPT]
    assert decide(pos, neg, margin=0.2).tolist() == [DISCARDED, DISCARDED, DISCARDED, DISCARDED, DISCARDED]


def test_ratios_keep_negatives_more_hallucinated() -> None:
    ratios = HallucinationRatios(mu_pos=0.3, sd_pos=0.3, mu_neg=0.4, sd_neg=0.3)  # heavy overlap on purpose
    rng = np.random.default_rng(0)
    draws = np.array([draw_ratios(rng, ratios) for _ in range(2000)])
    assert (draws[:, 1] > draws[:, 0]).all()
    assert ((draws >= 0) & (draws <= 1)).all()
    with pytest.raises(ValueError, match="mu_pos < mu_neg"):
        HallucinationRatios(mu_pos=0.8, mu_neg=0.5)


def test_plan_pairs_seeds_and_is_stable_under_more_images() -> None:
    ratios = HallucinationRatios()
    plan = plan_requests(_images(3), n_samples=4, n_negatives=2, ratios=ratios, base_seed=5)
    assert plan.height == 3 * (4 + 2)
    pos = plan.filter(pl.col("role") == POSITIVE)
    neg = plan.filter(pl.col("role") == NEGATIVE)
    paired = neg.join(pos, on=["image_id", "sample"], suffix="_pos")
    assert paired.height == neg.height
    assert (paired["seed"] == paired["seed_pos"]).all()  # negative k shares positive k's sampler seed
    assert (paired["h"] > paired["h_pos"]).all()
    assert pos["seed"].n_unique() == pos.height
    bigger = plan_requests(_images(5), n_samples=4, n_negatives=2, ratios=ratios, base_seed=5)
    assert bigger.head(plan.height).equals(plan)  # adding images changes no existing row
    assert stable_seed(5, "img-0", 0) == stable_seed(5, "img-0", 0) != stable_seed(6, "img-0", 0)
    with pytest.raises(ValueError, match="n_negatives"):
        plan_requests(_images(1), n_samples=1, n_negatives=2, ratios=ratios, base_seed=0)


def _scored() -> pl.DataFrame:
    """Two images; per image 3 positives and 2 negatives with hand-set scores."""
    rows = []
    scores = {
        "a": {POSITIVE: [0.20, 0.40, 0.30], NEGATIVE: [0.25, 0.10]},
        "b": {POSITIVE: [0.10, 0.15, 0.12], NEGATIVE: [0.50, 0.30]},
    }
    for image_id, by_role in scores.items():
        for role, values in by_role.items():
            for k, s in enumerate(values):
                rows.append(
                    {
                        "image_id": image_id,
                        "prompt": "p",
                        "role": role,
                        "sample": k,
                        "h": 0.1 if role == POSITIVE else 0.7,
                        "seed": k,
                        "response": f"{image_id}-{role}-{k}",
                        "score": s,
                    }
                )
    return pl.DataFrame(rows, schema_overrides={"seed": pl.UInt64, "sample": pl.Int32})


def _score_by_lookup(ids, texts):
    return np.array([0.05 for _ in texts])


def test_clip_picks_best_positive_and_worst_negative_then_applies_the_rule() -> None:
    pairs = organize_pairs(_scored(), PairRule.plain(margin=0.0), _score_by_lookup)
    a, b = pairs.row(0, named=True), pairs.row(1, named=True)
    assert (a["chosen"], a["rejected"], a["decision"]) == ("a-positive-1", "a-negative-1", KEPT)
    assert (a["score_chosen"], a["score_rejected"]) == (0.40, 0.10)
    # b: best positive 0.15 < worst negative 0.30 → reversed, scores travel with the texts
    assert (b["chosen"], b["rejected"], b["decision"]) == ("b-negative-1", "b-positive-1", REVERSED)
    assert (b["score_chosen"], b["score_rejected"]) == (0.30, 0.15)
    assert decision_counts(pairs) == {KEPT: 1, REVERSED: 1, DISCARDED: 0}
    strict = organize_pairs(_scored(), PairRule.plain(margin=0.2), _score_by_lookup)
    assert strict["decision"].to_list() == [KEPT, DISCARDED]
    assert training_pairs(strict)["image_id"].to_list() == ["a"]
    # without probes the probe columns are there, empty, so what reads them finds no probe
    probes = pairs.filter(pl.col("task") == PROBE)
    assert probes.height == 0 and probes.group_by("answer").len().height == 0
    assert pairs["answer"].null_count() == pairs.height


def test_baselines_without_verification_and_with_random_negatives() -> None:
    unverified = organize_pairs(_scored(), PairRule.plain(verification="none"), _score_by_lookup)
    assert unverified["chosen"].to_list() == ["a-positive-0", "b-positive-0"]
    assert unverified["rejected"].to_list() == ["a-negative-0", "b-negative-0"]
    assert unverified["decision"].to_list() == [KEPT, KEPT]
    shuffled = organize_pairs(_scored(), PairRule.plain(negatives="random", margin=0.0), _score_by_lookup)
    # each image's negative is the other image's chosen positive, scored against this image
    assert shuffled["response_negative"].to_list() == ["b-positive-1", "a-positive-1"]
    assert shuffled["score_negative"].to_list() == [0.05, 0.05]
    # every pair says where its rejected response came from
    assert set(unverified["rejected_source"]) == {"sampled"} and set(shuffled["rejected_source"]) == {"random"}


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        PairRule.plain(margin=-0.1)
    with pytest.raises(ValueError, match="verification"):
        PairRule.plain(verification="judge")  # type: ignore[arg-type]


def test_several_pairs_per_image_pair_ranks_in_order() -> None:
    pairs = organize_pairs(_scored(), PairRule.plain(pairs_per_image=2), _score_by_lookup)
    assert pairs["pair_id"].to_list() == ["a/0", "a/1", "b/0", "b/1"]
    assert pairs["response_positive"].to_list() == ["a-positive-1", "a-positive-2", "b-positive-1", "b-positive-2"]
    assert pairs["response_negative"].to_list() == ["a-negative-1", "a-negative-0", "b-negative-1", "b-negative-0"]
    assert pairs["decision"].to_list() == [KEPT, KEPT, REVERSED, REVERSED]
    with pytest.raises(ValueError, match="pairs_per_image"):
        PairRule.plain(pairs_per_image=0)


def test_own_samples_as_negatives_pair_best_and_worst_positive() -> None:
    pairs = organize_pairs(_scored(), PairRule.plain(negatives="own_samples"), _score_by_lookup)
    assert pairs["chosen"].to_list() == ["a-positive-1", "b-positive-1"]
    assert pairs["rejected"].to_list() == ["a-positive-0", "b-positive-0"]
    assert pairs["decision"].to_list() == [KEPT, KEPT]
    with pytest.raises(ValueError, match="needs verification='clip'"):
        PairRule.plain(negatives="own_samples", verification="none")
    single = _scored().filter((pl.col("role") == "negative") | (pl.col("sample") == 0))
    with pytest.raises(ValueError, match="n_samples >= 2"):
        organize_pairs(single, PairRule.plain(negatives="own_samples"), _score_by_lookup)


def test_segments_are_mentions_and_keep_the_punctuation() -> None:
    text = "a red circle, a blue square and a green star."
    assert [text[a:b] for a, b in segment_spans(text)] == ["a red circle", "a blue square", "a green star"]
    prose = "There is a dog. It sits on a mat!"
    assert [prose[a:b] for a, b in segment_spans(prose)] == ["There is a dog", "It sits on a mat"]
    assert segment_spans("") == [] and segment_spans(" . ") == []


def test_swapped_responses_change_one_segment_for_one_the_chosen_lacks() -> None:
    chosen = "a red circle, a blue square and a green star."
    swaps = swapped_responses(chosen, "a red circle and a yellow ring.")  # "a red circle" is shared: not inserted
    assert swaps == [
        "a yellow ring, a blue square and a green star.",
        "a red circle, a yellow ring and a green star.",
        "a red circle, a blue square and a yellow ring.",
    ]
    assert swapped_responses(chosen, "A red circle.") == []  # nothing new to insert
    assert swapped_responses("", "a yellow ring.") == []


def _pair_frame(chosen: list[str], rejected: list[str], score_chosen: list[float]) -> pl.DataFrame:
    n = len(chosen)
    return pl.DataFrame(
        {
            "image_id": [f"img-{i}" for i in range(n)],
            "chosen": chosen,
            "rejected": rejected,
            "score_chosen": score_chosen,
            "score_rejected": [0.0] * n,
        }
    )


def test_swap_negatives_takes_the_lowest_scored_edit_below_the_chosen() -> None:
    # A CLIP stand-in that knows image 0 holds a circle and a square: each wrong mention costs 0.1.
    truth = {"img-0": {"a red circle", "a blue square"}, "img-1": {"a green star"}}

    def score(ids, texts):
        return np.array(
            [
                1.0 - 0.1 * sum(s.strip(" .") not in truth[i] for s in t.replace(" and ", ", ").split(","))
                for i, t in zip(ids, texts)
            ]
        )

    pairs = _pair_frame(
        ["a red circle and a blue square.", "a green star."],
        ["a red circle, a yellow ring and a blue cross.", "a green star."],
        [1.0, 1.0],
    )
    swapped = swap_negatives(pairs, score)
    first, second = swapped.row(0, named=True), swapped.row(1, named=True)
    assert first["rejected"] in {"a yellow ring and a blue square.", "a red circle and a yellow ring."}
    assert first["rejected"].count(",") == 0 and first["rejected_source"] == "swapped"
    assert first["score_rejected"] == pytest.approx(0.9)
    # Nothing new in the donor: the sampled rejected response stays, and says so.
    assert (second["rejected"], second["rejected_source"]) == ("a green star.", "sampled")
    # An edit CLIP does not score below the chosen one is no error in CLIP's eyes: kept out.
    blind = swap_negatives(pairs, lambda ids, texts: np.ones(len(texts)))
    assert blind["rejected"].to_list() == pairs["rejected"].to_list()
    assert set(blind["rejected_source"]) == {"sampled"}


def test_swapped_negatives_through_the_rule() -> None:
    scored = _scored().with_columns(
        response=pl.col("response").str.replace_all("-", " ").str.replace(r" (\d)$", " and item ${1}") + "."
    )
    # A stand-in verifier that scores longer texts lower: the longest edit is the rejected one.
    pairs = organize_pairs(
        scored, PairRule.plain(negatives="swapped"), lambda ids, texts: -np.array([len(t) for t in texts])
    )
    assert pairs["decision"].to_list() == [KEPT, REVERSED]  # the rule ran on the sampled pair first
    assert pairs["chosen"].to_list() == ["a positive and item 1.", "b negative and item 1."]
    assert pairs["rejected"].to_list() == ["a positive and a negative.", "b negative and b positive."]
    assert pairs["rejected_source"].to_list() == ["swapped", "swapped"]
    with pytest.raises(ValueError, match="needs verification='clip'"):
        PairRule.plain(negatives="swapped", verification="none")


TRUTH = {"img-0": {"a red circle", "a blue square"}, "img-1": {"a green star"}}


def _segment_score(ids, texts) -> np.ndarray:
    """A verifier stand-in that knows TRUTH: +1 per true segment, -1.5 per other, -0.1 per text."""
    return np.array(
        [
            sum(1.0 if text[a:b] in TRUTH[i] else -1.5 for a, b in segment_spans(text)) - 0.1
            for i, text in zip(ids, texts)
        ]
    )


def test_segment_positions_and_join() -> None:
    texts = ["a red circle, a green star and a blue square.", "a red circle and a blue square."]
    assert segment_positions(texts) == {"a red circle": 0.0, "a green star": 1.0, "a blue square": 1.5}
    assert join_segments(["a", "b", "c"]) == "a, b and c." and join_segments(["a"]) == "a." and join_segments([]) == ""


def test_composition_adds_segments_while_the_score_rises() -> None:
    pools = {
        "img-0": segment_positions(["a red circle, a green star and a blue square.", "a yellow ring."]),
        "img-1": segment_positions(["a yellow ring."]),  # nothing true to compose from
    }
    composed = compose_by_verifier(pools, _segment_score)
    # img-0: the two true segments, in their sample order; the star and the ring lower the score and stay out
    assert composed["img-0"] == "a red circle and a blue square."
    # img-1: the best single segment is kept even when it scores below zero: every image gets a caption
    assert composed["img-1"] == "a yellow ring."
    # A bonus per segment above a false segment's cost lets it in: recall bought with precision
    generous = compose_by_verifier(pools, _segment_score, bonus=2.0)
    assert generous["img-0"] == "a red circle, a yellow ring, a green star and a blue square."  # mean positions


def test_segment_votes_count_each_text_once() -> None:
    samples = ["a green star and a green star.", "a green star.", "a blue square."]
    assert segment_votes(samples) == {"a green star": 2, "a blue square": 1}


def test_composition_from_the_best_sample_can_drop_its_segments() -> None:
    samples = ["a red circle, a blue square and a green star.", "a green star.", "a yellow ring."]
    positives = pl.DataFrame(
        {"image_id": ["img-0"] * 3, "sample": [0, 1, 2], "h": [0.0] * 3, "seed": [1, 2, 3], "response": samples},
        schema_overrides={"seed": pl.UInt64, "sample": pl.Int32},
    ).with_columns(score=pl.Series(_segment_score(["img-0"] * 3, samples)))
    climbed = composed_responses(positives, _segment_score, from_best=True)
    assert climbed["response"].to_list() == ["a red circle and a blue square."]  # the star dropped
    assert climbed["score"].to_list() == pytest.approx([1.9])


def test_composed_chosen_through_the_rule() -> None:
    responses = pl.DataFrame(
        {
            "image_id": ["img-0"] * 3,
            "prompt": ["p"] * 3,
            "role": [POSITIVE, POSITIVE, NEGATIVE],
            "sample": [0, 1, 0],
            "h": [0.0, 0.0, 0.4],
            "seed": [1, 2, 1],
            "response": ["a red circle and a green star.", "a blue square and a yellow ring.", "a green star."],
        },
        schema_overrides={"seed": pl.UInt64, "sample": pl.Int32},
    )
    scored = responses.with_columns(score=pl.Series(_segment_score(responses["image_id"], responses["response"])))
    extra = composed_responses(scored.filter(pl.col("role") == POSITIVE), _segment_score)
    assert extra.select("response", "sample", "h", "seed").row(0) == ("a red circle and a blue square.", 2, None, None)
    assert extra["score"].to_list() == pytest.approx([1.9])
    pairs = organize_pairs(scored, PairRule.plain(chosen="composed"), _segment_score)
    assert pairs.select("chosen", "rejected", "sample_positive", "decision").row(0) == (
        "a red circle and a blue square.",
        "a green star.",
        2,
        KEPT,
    )
    # Without composition the chosen one is a whole sample, hallucination included.
    assert organize_pairs(scored, PairRule.plain(), _segment_score)["chosen"].to_list() == [
        "a red circle and a green star."
    ]
    unverified = PairRule.plain(chosen="composed", verification="none")
    assert not unverified.composing  # without CLIP nothing is composed: the sample pairs as generated
    assert organize_pairs(scored, unverified, _segment_score)["chosen"].to_list() == ["a red circle and a green star."]
    with pytest.raises(ValueError, match="compose_bonus"):
        PairRule.plain(chosen="composed", compose_bonus=-0.1)
    with pytest.raises(ValueError, match="chosen"):
        PairRule.plain(chosen="oracle")  # type: ignore[arg-type]


def test_verification_defaults_and_the_unverified_baseline() -> None:
    """The product's defaults compose the chosen caption from the best sample, two pairs per image, one probe;
    without verification there is no verifier to compose with, so the samples pair as generated."""
    settings = VerificationSettings()
    assert (settings.chosen, settings.compose_from_best, settings.pairs_per_image, settings.probes_per_image) == (
        "composed",
        True,
        2,
        1,
    )
    assert settings.composing and settings.rule() == PairRule()
    assert not VerificationSettings(verification="none").composing
    with pytest.raises(ValueError, match="needs verification='clip'"):
        VerificationSettings(verification="none", negatives="swapped")
    with pytest.raises(ValueError, match="negatives"):
        VerificationSettings(negatives="prior_swapped")  # a benchmark variant (bench/prior_swaps.py), not a setting


def test_continuation_points_are_the_prefixes_before_each_later_mention() -> None:
    text = "a red circle, a blue star and a green ring."
    assert continuation_points(text) == [("a red circle,", (14, 25)), ("a red circle, a blue star and", (30, 42))]
    assert continuation_points("a star.") == []


def test_prior_swaps_put_the_priors_next_mention_in_place() -> None:
    text = "a red circle, a blue star and a green ring."
    # the prior's mention replaces the one at its place; cut continuations and named kinds are no edit
    assert prior_swapped_responses(text, [" a purple hexagon and", " a gr"]) == [
        "a red circle, a purple hexagon and a green ring."
    ]
    assert prior_swapped_responses(text, [" a yellow star, a", " a grey square."]) == [
        "a red circle, a blue star and a grey square."
    ]
    assert prior_swapped_responses(text, [" ", " a red circle"]) == []
    asked: list[list[str]] = []

    def continue_(prompts, prefixes):
        asked.append(list(prefixes))
        return [" a grey square," for _ in prefixes]

    same = "a red circle and a blue star."
    edits = prior_swap_edits([same, same, "a star."], ["p", "p", "p"], continue_)
    assert edits == [["a red circle and a grey square."]] * 2 + [[]]
    assert asked == [["a red circle and"]]  # one question per distinct (prompt, prefix)


def test_prior_swapped_negatives_through_the_rule() -> None:
    captions = {"a": "a red circle and a blue star.", "b": "a green ring."}  # b has no later mention to swap
    scored = _scored().with_columns(response=pl.col("image_id").replace_strict(captions))

    def score(ids, texts):  # a verifier stand-in: image a holds a circle and a star; -1 per other kind
        return np.array([-sum(o not in {"circle", "star"} for o in mentioned_objects(t)) for t in texts], float)

    def prior(prompts, prefixes):  # a language prior that follows a circle with a square
        return [" a grey square." if prefix == "a red circle and" else " a cross," for prefix in prefixes]

    pairs = organize_pairs(scored, PairRule.plain(), score, prior_swap_edit(prior))
    assert pairs["rejected"].to_list() == ["a red circle and a grey square.", "a green ring."]
    assert pairs["rejected_source"].to_list() == ["prior_swapped", "sampled"]


def test_random_negatives_never_come_from_the_same_image() -> None:
    # two pairs per image: a shift by one row would hand an image its own other-rank positive (2 of 3 shifts do)
    for seed in range(12):
        pairs = organize_pairs(
            _scored(), PairRule.plain(negatives="random", pairs_per_image=2, seed=seed), _score_by_lookup
        )
        donors = [text.split("-")[0] for text in pairs["response_negative"]]
        assert all(donor != image for donor, image in zip(donors, pairs["image_id"], strict=True))
    one_image = _scored().filter(pl.col("image_id") == "a")
    with pytest.raises(ValueError, match="two images"):
        organize_pairs(one_image, PairRule.plain(negatives="random", pairs_per_image=2), _score_by_lookup)


def test_a_share_of_random_negatives_mixes_both_kinds() -> None:
    # 100 copies of the two images: 400 caption pairs, about half of them drawn for another image's response
    scored = pl.concat(
        _scored().with_columns(pl.col("image_id") + str(i), pl.col("response").str.replace("-", f"{i}-", literal=True))
        for i in range(100)
    )
    rule = PairRule.plain(random_share=0.5, pairs_per_image=2, seed=3)
    pairs = organize_pairs(scored, rule, _score_by_lookup)
    mixed = pairs.filter(pl.col("rejected_source") == "random")
    sampled = pairs.filter(pl.col("rejected_source") == "sampled")
    assert pairs.height == 400 and 160 < mixed.height < 240 and mixed.height + sampled.height == 400
    # a drawn pair's negative is another image's positive, scored against this image; the others keep theirs
    donors = [text.split("-")[0] for text in mixed["response_negative"]]
    assert all(donor != image for donor, image in zip(donors, mixed["image_id"], strict=True))
    assert set(mixed["score_negative"]) == {0.05} and mixed["h_negative"].null_count() == mixed.height
    own = sampled.select("image_id", "response_negative").iter_rows()
    assert all(f"{image}-negative-" in text for image, text in own) and (sampled["h_negative"] == 0.7).all()
    # the draw is the round's: the same seed draws the same pairs, another seed others; no share draws none
    assert organize_pairs(scored, rule, _score_by_lookup).equals(pairs)
    reseeded = organize_pairs(scored, rule.model_copy(update={"seed": 4}), _score_by_lookup)
    assert not reseeded["rejected_source"].equals(pairs["rejected_source"])
    plain = organize_pairs(scored, PairRule.plain(pairs_per_image=2, seed=3), _score_by_lookup)
    assert set(plain["rejected_source"]) == {"sampled"} and plain.columns == pairs.columns
    with pytest.raises(ValueError, match="random_share"):
        PairRule.plain(negatives="random", random_share=0.5)
