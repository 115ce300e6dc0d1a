"""Organization stage: CLIP verifies the sampled responses and turns them into preference pairs."""

import time
from collections.abc import Iterator
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from resources import ArtifactStoreResource, ClipVerifier
from si_assets.assets.collection import decode_images
from si_assets.assets.common import (
    GPU_POOL,
    GPU_STEP_TAGS,
    ORGANIZATION,
    ROUND_AUTOMATION,
    ROUNDS,
    consumed,
    data_version,
    preflight,
    preview,
    round_seed_of,
    versioned,
)
from si_assets.modeling.preflight import verifier_text_length
from si_assets.organization.probes import PROBE
from si_assets.organization.verification import (
    DISCARDED,
    REVERSED,
    ChosenSource,
    PairRule,
    clip_score_fn,
    decision_counts,
    organize_pairs,
    score_responses,
)
from si_assets.storage import Checkpoint
from si_assets.storage.chunks import run_in_chunks
from si_assets.storage.memo import config_key
from si_assets.verifier.clip import BOOTSTRAP, VerifierSource

VERIFY_CODE_VERSION = "verify-4"  # the pairs' code; verify-4: yes/no probes and a `task` column
SCORING_VERSION = "verify-2"  # the stored CLIP scores' code: unchanged scores are reused across pair rules


# Every NegativeSource but 'prior_swapped', which asks the seed model inside verification: measured (and no better)
# in bench/round_ablation.py only, docs/round_experiments.md §13
AssetNegativeSource = Literal["hallucinated", "random", "own_samples", "swapped"]


class VerificationConfig(dg.Config):
    margin: float = Field(0.0, ge=0, description="pairs whose CLIP scores differ by less are discarded")
    score_mode: Literal["sentence_mean", "truncate"] = "sentence_mean"
    verification: Literal["clip", "none"] = Field(
        "clip", description="'none': pairs as generated (baseline; nothing is composed)"
    )
    negatives: AssetNegativeSource = Field(
        "hallucinated",
        description="'random': another image's response (baseline); 'own_samples': the CLIP-worst low-h sample; "
        "'swapped': the chosen response with one mention swapped for one of the hallucinated negative's",
    )
    # Defaults (docs/round_experiments.md §10): CLIP composes a candidate, climbing from the best sample, and the
    # two best candidates meet the two worst negatives; with trained_model's defaults, +5.5 precision at recall -0.7
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
    seed: int = 0
    max_reverse_rate: float = Field(0.5, ge=0, le=1, description="the reverse_rate check warns above this")
    max_discard_rate: float = Field(0.5, ge=0, le=1, description="the discard_rate check warns above this")
    chunk_size: int = Field(4096, ge=1, description="responses per stored chunk of scores (resume after a crash)")
    verifier: str = Field(
        BOOTSTRAP,
        description="'bootstrap': the embedded CLIP; an open_clip model name (e.g. 'ViT-L-14'); or a folder with "
        "open_clip_config.json + weights",
    )
    verifier_pretrained: str | None = Field(
        None, description="with a model name: a pretrained tag (e.g. 'openai'; hub or its cache) or a weights file"
    )
    max_cut_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="share of scored texts allowed past the verifier's context (pre-flight check): a few rambling "
        "responses are tolerated, a systematic cut is not",
    )

    def pair_rule(self, seed: int) -> PairRule:
        """The Dagster-free rule these settings stand for; `seed` is the round's (for random negatives). Without
        verification there is no verifier to compose with: the chosen response is the sample as generated."""
        composing = self.verification == "clip"
        return PairRule(
            margin=self.margin,
            verification=self.verification,
            negatives=self.negatives,
            seed=seed,
            pairs_per_image=self.pairs_per_image,
            chosen=self.chosen if composing else "best",
            compose_bonus=self.compose_bonus,
            compose_from_best=self.compose_from_best and composing,
            probes_per_image=self.probes_per_image,
        )

    def verifier_source(self) -> VerifierSource:
        try:
            return VerifierSource(self.verifier, self.verifier_pretrained)
        except ValueError as exc:
            raise dg.Failure(f"verified_pairs: {exc}") from exc


@dg.asset(
    group_name=ORGANIZATION,
    code_version=VERIFY_CODE_VERSION,
    partitions_def=ROUNDS,
    automation_condition=ROUND_AUTOMATION,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "reverse_rate", asset="verified_pairs", partitions_def=ROUNDS, description="CLIP reversed too many pairs"
        ),
        dg.AssetCheckSpec(
            "discard_rate", asset="verified_pairs", partitions_def=ROUNDS, description="the margin discarded too many"
        ),
    ],
)
def verified_pairs(
    context: dg.AssetExecutionContext,
    config: VerificationConfig,
    clip: ClipVerifier,
    store: ArtifactStoreResource,
    bootstrap_clip: Checkpoint,
    sampled_responses: pl.DataFrame,
    hallucinated_negatives: pl.DataFrame,
    unlabeled_images: pl.DataFrame,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Chosen = the CLIP-best candidates (the positives and, by default, a caption CLIP composes from their
    segments), rejected = the CLIP-worst negatives; reversed when the negative scores higher, discarded when the
    two are closer than `margin`. Every score and decision stays on the row."""
    try:
        rule = config.pair_rule(round_seed_of(context, config.seed))
    except ValueError as exc:
        raise dg.Failure(f"verified_pairs: {exc}") from exc
    started = time.perf_counter()
    verifier = config.verifier_source()
    scorer = clip.scorer(*verifier.load_args(bootstrap_clip.path))
    responses = pl.concat([sampled_responses, hallucinated_negatives])
    with preflight("verified_pairs"):
        cut = verifier_text_length(
            scorer.scored_texts(responses["response"].to_list(), config.score_mode),
            scorer.token_count,
            scorer.context_length,
            config.max_cut_share,
        )
    image_by_id = decode_images(unlabeled_images)
    score = clip_score_fn(scorer, image_by_id, unlabeled_images["id"].to_list(), config.score_mode)
    scoring = (config.score_mode, clip.device_name(), SCORING_VERSION)
    verifier_version = verifier.identity(bootstrap_clip.version)
    key = config_key(verifier_version, data_version(unlabeled_images), *scoring)
    scored, chunks = run_in_chunks(
        store.get(),
        "verified_pairs_scores",
        key,
        responses,
        config.chunk_size,
        lambda chunk: score_responses(chunk, score),
        context.log.info,
    )
    pairs = organize_pairs(scored, rule, score)
    seconds = time.perf_counter() - started
    counts = decision_counts(pairs)
    context.log.info(f"pairs: {counts} in {seconds:.1f}s")
    total = max(1, sum(counts.values()))  # caption pairs: the rule decided those
    probes = pairs.filter(pl.col("task") == PROBE)
    rates = {"reverse_rate": counts[REVERSED] / total, "discard_rate": counts[DISCARDED] / total}
    yield versioned(
        pairs,
        **counts,
        **rates,
        margin=config.margin,
        probe_pairs=probes.height,
        probe_answers=dict(probes.group_by("answer").len().sort("answer").iter_rows()),
        rejected_sources=dict(pairs.group_by("rejected_source").len().sort("rejected_source").iter_rows()),
        verifier=verifier_version if verifier.model == BOOTSTRAP else f"{verifier_version} ({verifier.model})",
        texts_past_verifier_context=cut,
        mean_score_chosen=float(pairs["score_chosen"].mean()),
        mean_score_rejected=float(pairs["score_rejected"].mean()),
        scored_responses=scored.height,
        score_chunks_reused=chunks.reused,
        verify_seconds=seconds,
        pairs_per_second=pairs.height / seconds,
        seed_checkpoint_version=dg.MetadataValue.text(
            str(sampled_responses["model_version"][0]) if sampled_responses.height else ""
        ),
        preview=preview(
            pairs.select("image_id", "task", "decision", "score_chosen", "score_rejected", "prompt", "chosen")
        ),
        **consumed(
            bootstrap_clip=bootstrap_clip,
            sampled_responses=sampled_responses,
            hallucinated_negatives=hallucinated_negatives,
            unlabeled_images=unlabeled_images,
        ),
    )
    # Many reversals: the mixture does not hallucinate enough, or CLIP cannot see the difference. Many
    # discards: the margin is too wide for this CLIP's score spread. Either way few pairs reach DPO.
    for name, limit in (("reverse_rate", config.max_reverse_rate), ("discard_rate", config.max_discard_rate)):
        yield dg.AssetCheckResult(
            check_name=name,
            passed=rates[name] <= limit,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={name: rates[name], "limit": limit},
        )
