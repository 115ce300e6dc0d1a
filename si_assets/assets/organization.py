"""Organization stage: CLIP verifies the sampled responses and turns them into preference pairs."""

import time
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from resources import ClipVerifier
from si_assets.assets.collection import decode_images
from si_assets.assets.common import ORGANIZATION, preview, versioned
from si_assets.organization.verification import (
    DISCARDED,
    REVERSED,
    PairRule,
    clip_score_fn,
    decision_counts,
    organize_pairs,
    score_responses,
)
from si_assets.storage import Checkpoint


class VerificationConfig(dg.Config):
    margin: float = Field(0.0, ge=0, description="pairs whose CLIP scores differ by less are discarded")
    score_mode: Literal["sentence_mean", "truncate"] = "sentence_mean"
    verification: Literal["clip", "none"] = Field("clip", description="'none': pairs as generated (baseline)")
    negatives: Literal["hallucinated", "random", "own_samples"] = Field(
        "hallucinated",
        description="'random': another image's response (baseline); 'own_samples': the CLIP-worst low-h sample",
    )
    pairs_per_image: int = Field(1, ge=1, description="k best positives meet the k worst negatives, by rank")
    seed: int = 0


@dg.asset(group_name=ORGANIZATION, code_version="verify-1")
def verified_pairs(
    context: dg.AssetExecutionContext,
    config: VerificationConfig,
    clip: ClipVerifier,
    bootstrap_clip: Checkpoint,
    sampled_responses: pl.DataFrame,
    hallucinated_negatives: pl.DataFrame,
    unlabeled_images: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Chosen = CLIP-best positive, rejected = CLIP-worst negative; reversed when the negative scores higher,
    discarded when the two are closer than `margin`. Every score and decision stays on the row."""
    rule = PairRule(config.margin, config.verification, config.negatives, config.seed, config.pairs_per_image)
    started = time.perf_counter()
    scorer = clip.scorer(f"local-dir:{bootstrap_clip.path}")
    image_by_id = decode_images(unlabeled_images)
    score = clip_score_fn(scorer, image_by_id, unlabeled_images["id"].to_list(), config.score_mode)
    scored = score_responses(pl.concat([sampled_responses, hallucinated_negatives]), score)
    pairs = organize_pairs(scored, rule, score)
    seconds = time.perf_counter() - started
    counts = decision_counts(pairs)
    context.log.info(f"pairs: {counts} in {seconds:.1f}s")
    return versioned(
        pairs,
        **counts,
        reverse_rate=counts[REVERSED] / max(1, pairs.height),
        discard_rate=counts[DISCARDED] / max(1, pairs.height),
        mean_score_chosen=float(pairs["score_chosen"].mean()),
        mean_score_rejected=float(pairs["score_rejected"].mean()),
        scored_responses=scored.height,
        verify_seconds=seconds,
        pairs_per_second=pairs.height / seconds,
        seed_checkpoint_version=dg.MetadataValue.text(
            str(sampled_responses["model_version"][0]) if sampled_responses.height else ""
        ),
        preview=preview(pairs.select("image_id", "decision", "score_chosen", "score_rejected", "chosen", "rejected")),
    )
