"""Organization stage: CLIP verifies the sampled responses and turns them into preference pairs."""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from resources import ArtifactStoreResource, ClipVerifier
from si_assets.assets.common import (
    GPU_POOL,
    GPU_STEP_TAGS,
    ORGANIZATION,
    ROUND_AUTOMATION,
    ROUNDS,
    consumed,
    preflight,
    preview,
    versioned,
)
from si_assets.organization.balance import OMISSION, name_push
from si_assets.organization.probes import PROBE
from si_assets.organization.verification import VerificationSettings, training_pairs
from si_assets.rounds.steps import Verified, verify
from si_assets.storage import Checkpoint

VERIFY_CODE_VERSION = "verify-4"  # the pairs' code; verify-4: yes/no probes and a `task` column


class VerificationConfig(dg.Config, VerificationSettings):
    """How CLIP verifies the responses and turns them into preference pairs."""


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
    with preflight("verified_pairs"):
        verified = verify(
            config,
            clip.scorer(*config.verifier_source().load_args(bootstrap_clip.path)),
            clip.device_name(),
            store.get(),
            bootstrap_clip.version,
            pl.concat([sampled_responses, hallucinated_negatives]),
            unlabeled_images,
            context.partition_key,
            log=context.log.info,
        )
    pairs, counts, rates = verified.pairs, verified.decisions(), verified.rates()
    context.log.info(f"pairs: {counts} in {verified.seconds:.1f}s")
    yield versioned(
        pairs,
        **counts,
        **rates,
        **pair_metadata(verified, sampled_responses),
        margin=config.margin,
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


def pair_metadata(verified: Verified, responses: pl.DataFrame) -> dict:
    """What a person reads about the pairs: probes, sources, scores, reuse and speed, which seed wrote the
    `responses`, and a preview."""
    pairs = verified.pairs
    probes = pairs.filter(pl.col("task") == PROBE)
    cut = {}
    if "unsupported_dropped" in pairs.columns:  # min_region_support: chosen captions cut to what CLIP finds
        dropped = pairs["unsupported_dropped"].fill_null(0)
        cut = {"region_support_cut": int((dropped > 0).sum()), "region_support_segments_dropped": int(dropped.sum())}
    # per object, the caption pairs' chosen-side minus rejected-side mentions: DPO learns to say the kinds pushed
    # down most less often, present or not (omission pairs offset it)
    trained = training_pairs(pairs).filter(pl.col("task") != PROBE)
    push = {"name_push": dict(sorted(name_push(trained.filter(pl.col("task") != OMISSION)).items()))}
    if OMISSION in trained["task"]:
        push["name_push_with_omissions"] = dict(sorted(name_push(trained).items()))
    return {
        **cut,
        **push,
        "probe_pairs": probes.height,
        "probe_answers": dict(probes.group_by("answer").len().sort("answer").iter_rows()),
        "rejected_sources": dict(pairs.group_by("rejected_source").len().sort("rejected_source").iter_rows()),
        "verifier": verified.verifier_version,
        "texts_past_verifier_context": verified.texts_past_verifier_context,
        "mean_score_chosen": float(pairs["score_chosen"].mean()),
        "mean_score_rejected": float(pairs["score_rejected"].mean()),
        "scored_responses": verified.scored_responses,
        "score_chunks_reused": verified.score_chunks_reused,
        "verify_seconds": verified.seconds,
        "pairs_per_second": pairs.height / verified.seconds,
        "seed_checkpoint_version": dg.MetadataValue.text(
            str(responses["model_version"][0]) if responses.height else ""
        ),
        "preview": preview(
            pairs.select("image_id", "task", "decision", "score_chosen", "score_rejected", "prompt", "chosen")
        ),
    }
