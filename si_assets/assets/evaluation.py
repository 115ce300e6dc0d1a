"""Evaluation stage: seed vs trained on held-out images, the promotion gate, the champion, the rounds summary."""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from resources import ArtifactStoreResource, VisionLanguageModels
from si_assets.assets.common import (
    EVALUATION,
    GPU_POOL,
    GPU_STEP_TAGS,
    PROMOTION_GATE,
    ROUND_AUTOMATION,
    ROUNDS,
    consumed,
    latest_metadata,
    markdown_table,
    preview,
    versioned,
)
from si_assets.evaluation.data import EvalData, coco_eval_data, world_eval_data
from si_assets.evaluation.evaluate import evaluate_model
from si_assets.plots import metric_bars_png, png_markdown
from si_assets.rounds import ChampionRegistry, GatePolicy, Promotion, gate_decision
from si_assets.rounds.summary import PLOTTED, plot_rounds, rounds_table
from si_assets.storage import Checkpoint
from si_assets.storage.memo import config_key, memoised_result
from si_assets.world import EVAL_PROMPT

EVAL_CODE_VERSION = "eval-3"

# The headline figures, also emitted as `<model>/<metric>` float metadata so the UI plots them over time.
HEADLINE = (
    "precision",
    "recall",
    "f1",
    "chair_s",
    "chair_i",
    "mentions_per_caption",
    "pope_accuracy",
    "pope_f1",
    "pope_yes_ratio",
)


class EvalConfig(dg.Config):
    source: Literal["world", "coco"] = Field("world", description="'coco': the coco_* files below")
    coco_instances: str | None = Field(None, description="instances_*.json (COCO format)")
    coco_images: str | None = Field(None, description="the folder the instances' file_names are in")
    coco_synonyms: str | None = Field(None, description="CHAIR's synonyms.txt (optional)")
    pope_files: list[str] = Field(default_factory=list, description="POPE question files; none: built from labels")
    max_images: int | None = Field(None, ge=1, description="evaluate the first N images only")
    caption_prompt: str = EVAL_PROMPT
    pope_per_image: int = 2
    batch_size: int = 64
    max_new_tokens: int = 32
    seed: int = Field(0, description="POPE question sampling; the same in every round, so rounds compare")
    min_precision_gain: float = Field(0.01, description="promotion gate: trained precision − seed precision")
    recall_tolerance: float = Field(0.03, description="promotion gate: largest recall loss vs seed and vs base")
    pope_tolerance: float = Field(0.03, description="promotion gate: largest POPE F1 loss vs seed and vs base")

    def metrics_key(self) -> str:
        """What determines the metrics of a checkpoint besides the data (the gate settings do not)."""
        return self.model_dump_json(exclude={"batch_size", "min_precision_gain", "recall_tolerance", "pope_tolerance"})

    def data(self, world_eval: pl.DataFrame) -> EvalData:
        if self.source == "world":
            return world_eval_data(world_eval.head(self.max_images) if self.max_images else world_eval)
        if not self.coco_instances or not self.coco_images:
            raise dg.Failure("eval_scores: source 'coco' needs coco_instances and coco_images")
        return coco_eval_data(
            self.coco_instances, self.coco_images, self.coco_synonyms, self.pope_files, self.max_images
        )


def metrics_table(results: dict[str, dict[str, float]]) -> pl.DataFrame:
    """One row per metric, one column per model, and `delta` = trained − seed when both are present."""
    names = [m for m in HEADLINE if all(m in r for r in results.values())]
    names += sorted({k for r in results.values() for k in r} - set(names) - {"n_captions"})
    table = pl.DataFrame({"metric": names, **{model: [r.get(m) for m in names] for model, r in results.items()}})
    if {"seed", "trained"} <= set(results):
        table = table.with_columns(delta=pl.col("trained") - pl.col("seed"))
    return table


def column(table: pl.DataFrame, model: str) -> dict[str, float]:
    return dict(zip(table["metric"], table[model]))


@dg.asset(
    group_name=EVALUATION,
    code_version=EVAL_CODE_VERSION,
    partitions_def=ROUNDS,
    automation_condition=ROUND_AUTOMATION,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            PROMOTION_GATE,
            asset="eval_scores",
            blocking=True,
            partitions_def=ROUNDS,  # one verdict per round, so a refused round does not block the others
            description="trained beats its seed on precision without losing recall beyond the tolerance",
        )
    ],
)
def eval_scores(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    trained_model: Checkpoint,
    world_eval: pl.DataFrame,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Base, seed and trained side by side on held-out images (the world's `eval` split or a COCO-format set,
    `source`), with deltas: object precision
    (1 − CHAIR_i), recall, F1, CHAIR_s and POPE (random / popular / adversarial); and the promotion gate.
    Each checkpoint is evaluated once: the seed's scores are reused from the round that trained it."""
    artifact_store = store.get()
    data = config.data(world_eval)

    def evaluate(checkpoint: Checkpoint) -> tuple[dict[str, float], pl.DataFrame, bool]:
        def build() -> tuple[pl.DataFrame, dict]:
            model, processor = models.load(checkpoint.path)
            result = evaluate_model(
                model,
                processor,
                data.ids,
                data.images,
                data.truths,
                data.vocab,
                config.caption_prompt,
                pope_per_image=config.pope_per_image,
                seed=config.seed,
                batch_size=config.batch_size,
                max_new_tokens=config.max_new_tokens,
                log=context.log.info,
                questions=data.questions,
            )
            return result.captions, result.metrics

        key = config_key(config.metrics_key(), checkpoint.version, data.fingerprint, EVAL_CODE_VERSION)
        captions, metrics, _, reused = memoised_result(artifact_store, "eval", key, build)
        return metrics, captions, reused

    (seed_m, seed_captions, seed_reused), (trained_m, trained_captions, _) = map(
        evaluate, (seed_checkpoint, trained_model)
    )
    champion = ChampionRegistry(artifact_store).champion_before(context.partition_key)
    if champion is not None and champion.eval_data and champion.eval_data != data.fingerprint[:16]:
        raise dg.Failure(
            f"eval_scores: {champion.round}'s champion and the base model were scored on evaluation data "
            f"{champion.eval_data}, this round's is {data.fingerprint[:16]}; the gate would compare across data "
            "sets. Evaluate on the same data (eval_scores config), or start a new chain of rounds from a new base."
        )
    base_m = champion.base_metrics if champion is not None else seed_m
    table = metrics_table({"base": base_m, "seed": seed_m, "trained": trained_m})
    policy = GatePolicy(config.min_precision_gain, config.recall_tolerance, config.pope_tolerance)
    gate = gate_decision(seed_m, trained_m, base_m, policy)
    headline = table.filter(pl.col("metric").is_in(HEADLINE))
    context.log.info(f"evaluation on held-out images:\n{headline}\npromotion gate: {gate.summary()}")
    side_by_side = seed_captions.select("id", "objects", seed="caption").join(
        trained_captions.select("id", trained="caption"), on="id"
    )
    trained_meta = latest_metadata(context, "trained_model", context.partition_key)
    yield versioned(
        table,
        eval_table=dg.MetadataValue.md(markdown_table(headline)),
        plot=dg.MetadataValue.md(png_markdown(metric_bars_png(table, PLOTTED), "seed vs trained")),
        captions=preview(side_by_side, rows=10),
        images=len(data.ids),
        eval_source=data.source,
        seed_scores_reused=seed_reused,
        gate_passed=gate.passed,
        gate=gate.summary(),
        lineage=dg.MetadataValue.md(lineage_markdown(seed_checkpoint, trained_model, trained_meta)),
        **consumed(seed_checkpoint=seed_checkpoint, trained_model=trained_model),
        **(
            {"input/world_eval": data.fingerprint[:16]}
            if config.source == "world"
            else {"input/eval_data": data.fingerprint[:16]}
        ),
        **{f"{name}/{m}": float(v[m]) for name, v in (("seed", seed_m), ("trained", trained_m)) for m in HEADLINE},
        **{f"base/{m}": float(base_m[m]) for m in HEADLINE if m in base_m},
        **{f"delta/{m}": float(trained_m[m] - seed_m[m]) for m in HEADLINE},
    )
    yield dg.AssetCheckResult(
        check_name=PROMOTION_GATE,
        passed=gate.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=gate.summary(),
        metadata={
            "precision_gain": gate.precision_gain,
            "recall_change_vs_seed": gate.recall_change_vs_seed,
            "recall_change_vs_base": gate.recall_change_vs_base,
            "pope_f1_change_vs_seed": gate.pope_f1_change_vs_seed,
            "pope_f1_change_vs_base": gate.pope_f1_change_vs_base,
            "min_precision_gain": config.min_precision_gain,
            "recall_tolerance": config.recall_tolerance,
            "pope_tolerance": config.pope_tolerance,
        },
    )


def lineage_markdown(seed: Checkpoint, trained: Checkpoint, trained_meta: dict) -> str:
    """seed → pairs → trained model, with the versions that link them (the pairs' from the trained model's
    own record of what it consumed)."""
    rows = pl.DataFrame(
        {
            "step": ["seed_checkpoint", "verified_pairs", "trained_model"],
            "version": [seed.version, trained_meta.get("input/verified_pairs", "?"), trained.version],
            "detail": [
                f"trained from: {trained_meta.get('input/seed_checkpoint', '?')}",
                f"{trained_meta.get('training_pairs', '?')} training pairs",
                f"{trained_meta.get('optimization', '?')}, {trained_meta.get('steps', '?')} steps",
            ],
        }
    )
    return markdown_table(rows)


@dg.asset(
    group_name=EVALUATION,
    code_version="champion-1",
    partitions_def=ROUNDS,
    automation_condition=ROUND_AUTOMATION & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def champion(
    context: dg.AssetExecutionContext,
    store: ArtifactStoreResource,
    eval_scores: pl.DataFrame,
    seed_checkpoint: Checkpoint,
    trained_model: Checkpoint,
) -> dg.Output[pl.DataFrame]:
    """Promotes the round's trained model: runs only after the blocking promotion gate passed, and writes the
    champion pointer into the artifact store (never implied by "latest"). The next round starts from it."""
    eval_meta = latest_metadata(context, "eval_scores", context.partition_key)
    if eval_meta.get("gate_passed") is not True:
        raise dg.Failure(f"{context.partition_key}: the promotion gate refused this model ({eval_meta.get('gate')})")
    stored = latest_metadata(context, "trained_model", context.partition_key)
    registry = ChampionRegistry(store.get())
    prior = registry.champion_before(context.partition_key)
    candidate = Promotion(
        round=context.partition_key,
        version=trained_model.version,
        uri=stored["path"],
        content_hash=stored["content_hash"],
        seed_version=seed_checkpoint.version,
        metrics=column(eval_scores, "trained"),
        base_metrics=prior.base_metrics if prior is not None else column(eval_scores, "seed"),
        eval_data=eval_meta.get("input/world_eval") or eval_meta.get("input/eval_data", ""),
        run_id=context.run.run_id,
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    outcome = registry.promote(candidate)
    context.log.info(f"{context.partition_key}: {outcome.reason}")
    current = outcome.champion
    record = pl.DataFrame(
        {
            "round": [context.partition_key],
            "promoted": [outcome.promoted],
            "reason": [outcome.reason],
            "candidate_version": [trained_model.version],
            "champion_round": [current.round if current else None],
            "champion_version": [current.version if current else None],
            "precision": [candidate.metrics["precision"]],
            "recall": [candidate.metrics["recall"]],
        }
    )
    history = pl.DataFrame(
        [{"round": p.round, "version": p.version, "precision": p.metrics["precision"]} for p in outcome.history]
    )
    return versioned(
        record,
        promoted=outcome.promoted,
        reason=outcome.reason,
        champion_round=current.round if current else "",
        champion_version=current.version if current else "",
        champion_history=dg.MetadataValue.md(markdown_table(history) if history.height else "(none)"),
        **consumed(eval_scores=eval_scores, seed_checkpoint=seed_checkpoint, trained_model=trained_model),
    )


# The summary waits for no round (a refused round never materializes `champion`), only for runs in flight.
SUMMARY_AUTOMATION = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("on any round's update")


@dg.asset(
    group_name=EVALUATION,
    code_version="summary-2",
    deps=[eval_scores, champion, "verified_pairs"],
    automation_condition=SUMMARY_AUTOMATION,
)
def rounds_summary(context: dg.AssetExecutionContext, store: ArtifactStoreResource) -> dg.Output[pl.DataFrame]:
    """One row per round: pairs kept / reversed / discarded, yes/no probes, seed vs trained metrics, the gate,
    whether it was promoted; and a plot of the metrics across rounds."""
    registry = ChampionRegistry(store.get())
    promoted = {p.round: p.version for p in registry.history()}
    rows = []
    for key in context.instance.get_dynamic_partitions(ROUNDS.name):
        pairs = latest_metadata(context, "verified_pairs", key)
        scores = latest_metadata(context, "eval_scores", key)
        row: dict = {"round": key}
        for name in ("kept", "reversed", "discarded", "probe_pairs", "reverse_rate", "discard_rate", "margin"):
            row[name] = pairs.get(name)
        for model in ("seed", "trained"):
            for metric in PLOTTED:
                row[f"{model}_{metric}"] = scores.get(f"{model}/{metric}")
        row["gate_passed"] = scores.get("gate_passed")
        row["trained_version"] = scores.get("input/trained_model")
        row["promoted"] = row["trained_version"] is not None and promoted.get(key) == row["trained_version"]
        rows.append(row)
    table = rounds_table(rows)
    current = registry.current()
    shown = table.drop("number", "trained_version", strict=False)
    return versioned(
        table,
        rounds=table.height,
        champion=f"{current.version} ({current.round})" if current else "base model (no promotion yet)",
        summary=dg.MetadataValue.md(markdown_table(shown) if table.height else "(no rounds yet)"),
        plot=dg.MetadataValue.md(png_markdown(plot_rounds(table), "metrics across rounds") if table.height else ""),
    )
