"""Data organization: CLIP scores turn sampled responses into preference pairs, judge-free.

Per image the chosen response is the CLIP-best of the positives (n_samples = 1 is the paper's literal
recipe) and the rejected one the CLIP-worst of the negatives. Then the rule of the method: a pair whose
rejected response outscores its chosen one is reversed, a pair whose scores are closer than `margin` is
discarded. Every score and decision stays on the row; training reads only kept and reversed pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from si_assets.collection.sampling import NEGATIVE, POSITIVE, stable_seed
from si_assets.organization.composition import composed_responses
from si_assets.organization.probes import PROBE, probe_pairs
from si_assets.organization.segments import swapped_responses
from si_assets.organization.support import RegionCaption, RegionPairs
from si_assets.settings import Settings
from si_assets.verifier.clip import BOOTSTRAP, ScoreMode, VerifierSource

KEPT, REVERSED, DISCARDED = "kept", "reversed", "discarded"
CAPTION = "caption"  # a pair's `task`: a caption pair, or a yes/no probe restating one (PROBE)
Verification = Literal["clip", "none"]
NegativeSource = Literal["hallucinated", "random", "own_samples", "swapped"]
ChosenSource = Literal["best", "composed"]
OmissionSource = Literal["chosen", "consensus"]
Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (image ids, texts) -> verifier scores
# An edit of the caption pairs, with the verifier's score, before the probes restate them (a benchmark's negatives).
PairEdit = Callable[[pl.DataFrame, Score], pl.DataFrame]


class PairRule(Settings):
    """How scored responses become preference pairs. The defaults are the product's (docs/method.md,
    "Organization"): CLIP composes a chosen caption, climbing from the best sample; the two best candidates meet
    the two worst negatives; one yes/no probe per image. `PairRule.plain()` is the method's literal pairing."""

    margin: float = Field(0.0, ge=0, description="pairs whose CLIP scores differ by less are discarded")
    verification: Verification = Field(
        "clip", description="'none': pairs as generated, positive k vs negative k (baseline; nothing is composed)"
    )
    negatives: NegativeSource = Field(
        "hallucinated",
        description="'random': another image's response (baseline); 'own_samples': the CLIP-worst low-h sample; "
        "'swapped': the chosen response with one mention swapped for one of the hallucinated negative's",
    )
    random_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="with negatives 'hallucinated': this share of the caption pairs, drawn per pair, takes another "
        "image's response as its negative instead (both kinds in one round); 0: none",
    )
    seed: int = Field(0, ge=0, description="with the round key, the seed of random negatives and of the probes' draw")
    pairs_per_image: int = Field(2, ge=1, description="k best positives meet the k worst negatives, by rank")
    chosen: ChosenSource = Field(
        "composed",
        description="'best': the CLIP-best sample; 'composed': CLIP also builds a caption from the samples' segments "
        "(one added or dropped at a time while its score rises), which joins the candidates",
    )
    compose_bonus: float = Field(0.0, ge=0, description="added per segment while composing: recall for precision")
    compose_from_best: bool = Field(
        True, description="composing starts from the CLIP-best sample's segments and may also drop them"
    )
    probes_per_image: int = Field(
        1,
        ge=0,
        description="yes/no questions ('Is there a X in the image?') trained beside the captions, per image: "
        "'yes.' for objects the best chosen response names, 'no.' for objects only rejected ones name, "
        "alternating; 0: none (the round then teaches the model to answer yes to everything)",
    )

    @model_validator(mode="after")
    def _needs_clip(self) -> PairRule:
        if self.negatives in ("own_samples", "swapped") and self.verification != "clip":
            raise ValueError(f"negatives={self.negatives!r} needs verification='clip' (CLIP picks the negative)")
        if self.random_share and self.negatives != "hallucinated":
            raise ValueError(f"random_share mixes random into hallucinated negatives, not into {self.negatives!r}")
        return self

    @classmethod
    def plain(cls, **changes: object) -> PairRule:
        """The method's literal pairing: the CLIP-best sample vs the CLIP-worst negative, one pair per image,
        nothing composed, no probes."""
        literal = {"pairs_per_image": 1, "chosen": "best", "compose_from_best": False, "probes_per_image": 0}
        return cls(**{**literal, **changes})

    @property
    def composing(self) -> bool:
        """Whether CLIP composes a chosen caption: only when it verifies (without CLIP there is nothing to
        compose with, and the chosen response is the sample as generated)."""
        return self.chosen == "composed" and self.verification == "clip"


class VerificationSettings(PairRule):
    """The organization step: the pair rule plus which CLIP verifies, how texts are scored and the checks."""

    score_mode: ScoreMode = Field("sentence_mean", description="long responses: per-sentence mean, or truncated")
    verifier: str = Field(
        BOOTSTRAP,
        description="'bootstrap': the embedded CLIP; an open_clip model name (e.g. 'ViT-L-14'); or a folder with "
        "open_clip_config.json + weights",
    )
    verifier_pretrained: str | None = Field(
        None, description="with a model name: a pretrained tag (e.g. 'openai'; hub or its cache) or a weights file"
    )
    min_region_support: float = Field(
        0.0,
        ge=0,
        le=1,
        description="chosen captions lose the segments whose object CLIP finds in no window of the image with at "
        "least this share of its probability (region support); 0: off",
    )
    region_pairs: RegionPairs = Field(
        "add",
        description="with min_region_support: 'cut' trains towards the cut captions in place of the chosen ones; "
        "'add' keeps the pairs and adds one per cut caption, the cut caption chosen against the whole one",
    )
    region_caption: RegionCaption = Field(
        "chosen",
        description="with min_region_support: 'chosen' cuts the chosen caption to its supported segments; "
        "'consensus' writes it anew from the objects that min_sample_share of the image's samples name and region "
        "support finds",
    )
    min_sample_share: float = Field(
        0.5, gt=0, le=1, description="with region_caption 'consensus': the share of samples that must name an object"
    )
    region_window: float = Field(1 / 3, gt=0, le=1, description="region support's window side, share of the image")
    omission_share: float = Field(
        0.0,
        ge=0,
        le=2,
        description="pairs that prefer a chosen caption to itself with one object left out, per object: this share "
        "of the net push down the caption pairs give its name (they teach to say each kind less); 0: none; above "
        "1: a net push up on the names the omitted captions hold",
    )
    # The chosen captions of the caption pairs still name the hallucinations the verifier believes; the grounded
    # consensus names fewer (docs/results.md, "Three rounds on new images"), so its omissions are mostly true objects.
    omission_source: OmissionSource = Field(
        "chosen",
        description="the captions omission pairs leave objects out of: every distinct chosen caption, or "
        "'consensus': the grounded consensus only (region_caption 'consensus' with region_pairs 'add')",
    )
    max_reverse_rate: float = Field(0.5, ge=0, le=1, description="the reverse_rate check warns above this")
    max_discard_rate: float = Field(0.5, ge=0, le=1, description="the discard_rate check warns above this")
    chunk_size: int = Field(4096, ge=1, description="responses per stored chunk of scores (resume after a crash)")
    max_cut_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="share of scored texts allowed past the verifier's context (pre-flight check): a few rambling "
        "responses are tolerated, a systematic cut is not",
    )

    @model_validator(mode="after")
    def _verifier_exists(self) -> VerificationSettings:
        self.verifier_source()  # a missing folder or unknown model name is refused as configuration
        if self.min_region_support and self.verification != "clip":
            raise ValueError("min_region_support needs verification='clip' (CLIP finds the objects)")
        if self.region_caption == "consensus" and not self.min_region_support:
            raise ValueError("region_caption='consensus' needs min_region_support > 0 (the support an object needs)")
        if self.omission_source == "consensus" and (self.region_caption, self.region_pairs) != ("consensus", "add"):
            raise ValueError(
                "omission_source='consensus' needs region_caption='consensus' and region_pairs='add' (the pairs that "
                "carry the grounded consensus)"
            )
        return self

    def verifier_source(self) -> VerifierSource:
        return VerifierSource(self.verifier, self.verifier_pretrained)

    def rule(self) -> PairRule:
        """The pair rule alone (what the pairs depend on besides the scores)."""
        return PairRule(**{name: getattr(self, name) for name in PairRule.model_fields})


def decide(score_positive: np.ndarray, score_negative: np.ndarray, margin: float) -> np.ndarray:
    """kept / reversed / discarded per pair. A near tie is discarded whichever way it leans."""
    diff = np.asarray(score_positive, dtype=float) - np.asarray(score_negative, dtype=float)
    return np.where(np.abs(diff) < margin, DISCARDED, np.where(diff < 0, REVERSED, KEPT))


def score_responses(
    responses: pl.DataFrame,
    score: Callable[[Sequence[str], Sequence[str]], np.ndarray],
) -> pl.DataFrame:
    """Add a `score` column: score(image_ids, texts) is the verifier's image-text similarity."""
    return responses.with_columns(
        score=pl.Series(score(responses["image_id"].to_list(), responses["response"].to_list()), dtype=pl.Float64)
    )


def select_candidates(scored: pl.DataFrame, rule: PairRule) -> pl.DataFrame:
    """Candidate pairs per image: (positive, negative) texts with their scores and ratios, and a `rank`.
    With CLIP, rank r pairs the r-th best positive with the r-th worst negative; without, sample r with
    sample r (pairs as generated)."""
    positives = scored.filter(pl.col("role") == POSITIVE)
    negatives = positives if rule.negatives == "own_samples" else scored.filter(pl.col("role") == NEGATIVE)
    if rule.negatives == "own_samples" and positives.group_by("image_id").len()["len"].min() < 2:
        raise ValueError("negatives='own_samples' needs n_samples >= 2: the rejected response is another sample")
    if rule.verification == "clip":
        positives = positives.sort("image_id", "score", "sample", descending=[False, True, False])
        negatives = negatives.sort("image_id", "score", "sample")
    else:
        positives, negatives = positives.sort("image_id", "sample"), negatives.sort("image_id", "sample")
    rank = pl.int_range(pl.len()).over("image_id").alias("rank")
    positives = positives.with_columns(rank).filter(pl.col("rank") < rule.pairs_per_image)
    negatives = negatives.with_columns(rank).filter(pl.col("rank") < rule.pairs_per_image)
    keep = ["image_id", "rank", "prompt", "response", "score", "h", "sample", "seed"]
    pos = positives.select(keep).rename({c: f"{c}_positive" for c in keep[3:]})
    neg = negatives.select(*keep[:2], *keep[3:]).rename({c: f"{c}_negative" for c in keep[3:]})
    return pos.join(neg, on=["image_id", "rank"], how="inner").sort("image_id", "rank")


def random_negatives(
    candidates: pl.DataFrame, score: Callable[[Sequence[str], Sequence[str]], np.ndarray], seed: int, share: float = 1.0
) -> pl.DataFrame:
    """Baseline: the negative is another image's positive (a cyclic shift of the rows that moves every pair to
    another image), scored against this image. With `share` < 1 only that share of the pairs, drawn per pair,
    takes one; the others keep theirs. `source_negative` says which."""
    n = candidates.height
    images = candidates["image_id"].to_numpy()
    if candidates["image_id"].n_unique() < 2:
        raise ValueError("random negatives need at least two images")
    rng = np.random.default_rng(stable_seed("random-negatives", seed))
    drawn = int(rng.integers(1, n))
    # With several pairs per image, shifting by a few rows can land on the same image's other rank: take the next
    # shift that moves every row off its image (rows are grouped by image; while no image holds more than half the
    # rows, a shift by the largest image's row count is one).
    for shift in (1 + (drawn - 1 + k) % (n - 1) for k in range(n - 1)):
        donors = (np.arange(n) + shift) % n
        if not (images[donors] == images).any():
            break
    else:
        raise ValueError("random negatives: no shift of the pairs moves every one to another image")
    replaced = np.ones(n, dtype=bool) if share >= 1 else rng.random(n) < share
    rows = np.flatnonzero(replaced)
    texts = candidates["response_positive"].gather(donors[rows])
    scores = np.full(n, np.nan)
    scores[rows] = score(candidates["image_id"].gather(rows).to_list(), texts.to_list()) if len(rows) else []
    donated = np.full(n, None, dtype=object)
    donated[rows] = texts.to_list()
    random_row = pl.Series(replaced)

    def replace(column: str, value: pl.Series | None) -> pl.Expr:
        return pl.when(random_row).then(value).otherwise(column).alias(column)

    return candidates.with_columns(
        replace("response_negative", pl.Series(donated, dtype=pl.String)),
        replace("score_negative", pl.Series(scores, dtype=pl.Float64)),
        *(replace(column, None) for column in ("h_negative", "sample_negative", "seed_negative")),
        source_negative=pl.when(random_row).then(pl.lit("random")).otherwise(pl.lit("sampled")),
    )


def swap_negatives(pairs: pl.DataFrame, score: Callable[[Sequence[str], Sequence[str]], np.ndarray]) -> pl.DataFrame:
    """Rejected = the chosen response with one segment swapped for a segment of the rejected (hallucinated)
    one, the swap CLIP scores lowest. Chosen and rejected then differ in one mention, at equal length, so DPO
    learns which object to name rather than when to stop (the shared rest of the response cancels out)."""
    edits = [swapped_responses(c, r) for c, r in pairs.select("chosen", "rejected").iter_rows()]
    return edited_negatives(pairs, edits, score, "swapped")


def edited_negatives(
    pairs: pl.DataFrame,
    edits: Sequence[Sequence[str]],
    score: Callable[[Sequence[str], Sequence[str]], np.ndarray],
    source: str,
) -> pl.DataFrame:
    """Per pair, the edit of its chosen response (`edits[row]`) that CLIP scores lowest becomes the rejected
    response, tagged `source`. A pair keeps its rejected response when no edit scores below the chosen one (CLIP
    sees no error)."""
    ids, texts, owners = [], [], []
    for row, (image_id, row_edits) in enumerate(zip(pairs["image_id"], edits, strict=True)):
        ids += [image_id] * len(row_edits)
        texts += row_edits
        owners += [row] * len(row_edits)
    rejected = pairs["rejected"].to_list()
    rejected_score = pairs["score_rejected"].to_list()
    has_source = "rejected_source" in pairs.columns
    rejected_source = pairs["rejected_source"].to_list() if has_source else ["sampled"] * pairs.height
    if texts:
        scored = pl.DataFrame({"row": owners, "text": texts, "score": score(ids, texts)})
        lowest = scored.sort("row", "score", maintain_order=True).group_by("row", maintain_order=True).first()
        for row, text, value in lowest.iter_rows():
            if value < pairs["score_chosen"][row]:
                rejected[row], rejected_score[row], rejected_source[row] = text, value, source
    return pairs.with_columns(
        rejected=pl.Series(rejected, dtype=pl.String),
        score_rejected=pl.Series(rejected_score, dtype=pl.Float64),
        rejected_source=pl.Series(rejected_source, dtype=pl.String),
    )


def organize_pairs(
    scored: pl.DataFrame,
    rule: PairRule,
    score: Callable[[Sequence[str], Sequence[str]], np.ndarray],
    edit: PairEdit | None = None,
) -> pl.DataFrame:
    """The verified pairs: chosen/rejected after the reverse/discard rule, with every score kept.
    `pair_id` is `<image_id>/<rank>`; with `rule.probes_per_image`, the yes/no probes follow (`task` says which).
    `edit`, if given, rewrites the caption pairs before the probes restate them."""
    if rule.composing:
        positives = scored.filter(pl.col("role") == POSITIVE)
        composed = composed_responses(positives, score, rule.compose_bonus, rule.compose_from_best)
        scored = pl.concat([scored, composed])
    candidates = select_candidates(scored, rule)
    candidates = candidates.with_columns(pair_id=pl.format("{}/{}", "image_id", "rank"))
    if rule.negatives == "random" or rule.random_share:
        share = 1.0 if rule.negatives == "random" else rule.random_share
        candidates = random_negatives(candidates, score, rule.seed, share)
    else:
        candidates = candidates.with_columns(source_negative=pl.lit("sampled"))
    if rule.verification == "clip":
        decision = decide(candidates["score_positive"].to_numpy(), candidates["score_negative"].to_numpy(), rule.margin)
    else:
        decision = np.full(candidates.height, KEPT)
    reversed_ = pl.col("decision") == REVERSED
    pairs = candidates.with_columns(decision=pl.Series(decision, dtype=pl.String))
    pairs = pairs.with_columns(
        chosen=pl.when(reversed_).then("response_negative").otherwise("response_positive"),
        rejected=pl.when(reversed_).then("response_positive").otherwise("response_negative"),
        score_chosen=pl.when(reversed_).then("score_negative").otherwise("score_positive"),
        score_rejected=pl.when(reversed_).then("score_positive").otherwise("score_negative"),
        rejected_source="source_negative",
        task=pl.lit(CAPTION),
    ).drop("source_negative")
    if rule.negatives == "swapped":
        pairs = swap_negatives(pairs, score)
    if edit is not None:
        pairs = edit(pairs, score)
    if rule.probes_per_image:
        probes = probe_pairs(training_pairs(pairs), rule.probes_per_image, rule.seed)
        probes = probes.with_columns(decision=pl.lit(KEPT), rejected_source=pl.lit(PROBE), task=pl.lit(PROBE))
        pairs = pl.concat([pairs, probes], how="diagonal_relaxed")
    else:  # the same columns either way: what reads the probes finds none
        pairs = pairs.with_columns(object=pl.lit(None, pl.String), answer=pl.lit(None, pl.String))
    return pairs


def decision_counts(pairs: pl.DataFrame) -> dict[str, int]:
    """kept / reversed / discarded among the caption pairs (the rule decides those; probes restate them)."""
    captions = pairs.filter(pl.col("task") == CAPTION) if "task" in pairs.columns else pairs  # verify-3 had no task
    counts = dict(captions.group_by("decision").len().iter_rows())
    return {d: int(counts.get(d, 0)) for d in (KEPT, REVERSED, DISCARDED)}


def training_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    """The pairs DPO trains on: everything not discarded."""
    return pairs.filter(pl.col("decision") != DISCARDED)


def clip_score_fn(scorer, image_by_id: Mapping, image_ids: Sequence[str], mode: str) -> Callable:
    """A score(image_ids, texts) function with one image embedding per distinct image."""
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    embeddings = scorer.image_embeddings([image_by_id[i] for i in image_ids])

    def score(ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        rows = embeddings[np.array([index[i] for i in ids])]
        return scorer.score(rows, texts, mode=mode)

    return score
