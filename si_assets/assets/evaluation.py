"""Evaluation stage: seed vs trained on held-out images, the promotion gate, the champion, the rounds summary."""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import polars as pl

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
    preflight,
    preview,
    versioned,
)
from si_assets.evaluation.amber import AMBER_HEADLINE
from si_assets.evaluation.data import EvalSettings
from si_assets.plots import metric_bars_png, png_markdown
from si_assets.rounds import ChampionRegistry, GateDecision, GatePolicy, Promotion, degenerate_answers
from si_assets.rounds.steps import (
    EVAL_CODE_VERSION,
    GATE_SPLIT,
    HEADLINE,
    Evaluation,
    column,
    evaluate,
    write_results,
)
from si_assets.rounds.summary import PLOTTED, headline_table, plot_rounds, rounds_table
from si_assets.storage import Checkpoint

DEGENERATE_ANSWERS = "degenerate_answers"


class EvalConfig(dg.Config, EvalSettings, GatePolicy):
    """Which held-out images, how they are probed, and the promotion gate."""


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
        ),
        dg.AssetCheckSpec(
            DEGENERATE_ANSWERS,
            asset="eval_scores",
            partitions_def=ROUNDS,
            description="seed or trained model answers the yes/no questions no better than a constant or a coin",
        ),
    ],
)
def eval_scores(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    models: VisionLanguageModels,
    store: ArtifactStoreResource,
    seed_checkpoint: Checkpoint,
    trained_model: Checkpoint,
    world_dev: pl.DataFrame,
    world_test: pl.DataFrame,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Base, seed and trained side by side on the held-out `dev` and `test` splits (the world's, COCO-format sets,
    or AMBER's, `source`), each metric with a bootstrap interval and each gain with a paired one: object precision,
    recall, F1, CHAIR_i, CHAIR_s and POPE (random / popular / adversarial), or AMBER's own (CHAIR, Cover, Hal, Cog,
    yes/no accuracy, precision, recall, F1, AMBER score) and what the gate reads of them. The gate reads dev only;
    test is reported. Each checkpoint is evaluated once: the seed's scores come from the round that trained it.
    Each model's results per split are also written as an lmms-eval-style results.json into the store."""
    artifact_store = store.get()
    with preflight("eval_scores"):
        result = evaluate(
            config,
            config.policy(),
            models,
            artifact_store,
            seed_checkpoint,
            trained_model,
            {"dev": world_dev, "test": world_test},
            ChampionRegistry(artifact_store).champion_before(context.partition_key),
            context.log.info,
        )
    gate = result.gate
    context.log.info(f"held-out evaluation:\n{headline_table(result.table)}\npromotion gate (dev): {gate.summary()}")
    trained_meta = latest_metadata(context, "trained_model", context.partition_key)
    results = write_results(artifact_store, result, context.partition_key)
    yield versioned(
        result.table,
        **evaluation_metadata(result, config.source == "world"),
        **{
            f"results_json/{name}": dg.MetadataValue.path(f"{artifact_store.root_url}/{p}")
            for name, p in results.items()
        },
        lineage=dg.MetadataValue.md(lineage_markdown(seed_checkpoint, trained_model, trained_meta)),
        **consumed(seed_checkpoint=seed_checkpoint, trained_model=trained_model),
    )
    yield gate_check(gate, config.policy())
    yield answers_check(result, config.policy())


def gate_check(gate: GateDecision, policy: GatePolicy) -> dg.AssetCheckResult:
    """The blocking promotion gate, decided on the dev split."""
    return dg.AssetCheckResult(
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
            **policy.model_dump(),
        },
    )


def answers_check(result: Evaluation, policy: GatePolicy) -> dg.AssetCheckResult:
    """Flags a seed or trained model whose yes/no answers are no better than a constant or a coin (dev split)."""
    gated = result.splits[GATE_SPLIT]
    models = {"seed": gated.seed.metrics, "trained": gated.trained.metrics}
    found = {model: degenerate_answers(metrics, policy) for model, metrics in models.items()}
    return dg.AssetCheckResult(
        check_name=DEGENERATE_ANSWERS,
        passed=not any(found.values()),
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{model}: {', '.join(r)}" for model, r in found.items() if r) or "both models answer",
        metadata={
            f"{model}/{m}": metrics[m] for model, metrics in models.items() for m in ("pope_accuracy", "pope_yes_ratio")
        },
    )


def evaluation_metadata(result: Evaluation, world: bool) -> dict:
    """The tables in markdown (test, then dev), a plot, the test captions side by side, and every headline metric
    (AMBER's too, on AMBER) as a float per split (the UI plots those across materializations)."""
    floats = {}
    for split, evaluation in result.splits.items():
        seed, trained = evaluation.seed.metrics, evaluation.trained.metrics
        bounds = evaluation.bounds
        for m in [m for m in (*HEADLINE, *AMBER_HEADLINE) if m in seed]:
            floats |= {f"{split}/seed/{m}": seed[m], f"{split}/trained/{m}": trained[m]}
            floats[f"{split}/delta/{m}"] = trained[m] - seed[m]
            for model, per_metric in bounds.items():
                if m in per_metric:
                    low, high = per_metric[m]
                    floats |= {f"{split}/{model}/{m}_low": low, f"{split}/{model}/{m}_high": high}
    test = result.splits["test"]
    return {
        "eval_table": dg.MetadataValue.md(markdown_table(headline_table(result.table))),
        "plot": dg.MetadataValue.md(
            png_markdown(metric_bars_png(result.table.filter(pl.col("split") == "test"), PLOTTED), "test split")
        ),
        "captions": preview(test.side_by_side(), rows=10),
        **{f"images/{split}": len(e.data.ids) for split, e in result.splits.items()},
        "eval_source": test.data.source,
        "seed_scores_reused": all(e.seed.reused for e in result.splits.values()),
        "gate_passed": result.gate.passed,
        "gate": result.gate.summary(),
        "gate_data": result.splits[GATE_SPLIT].data.fingerprint[:16],
        **{
            f"input/{'world_' if world else 'eval_data/'}{split}": e.data.fingerprint[:16]
            for split, e in result.splits.items()
        },
        **{k: float(v) for k, v in floats.items()},
        **{f"base/{m}": float(result.base_metrics[m]) for m in HEADLINE if m in result.base_metrics},
    }


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
                f"{trained_meta.get('optimization', '?')}, {trained_meta.get('steps', '?')} steps"
                + (f", continuing {warm_from}" if (warm_from := trained_meta.get("warm_started_from")) else ""),
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
        metrics=column(eval_scores, "trained", GATE_SPLIT),  # the gate's split: the next round is gated on it
        base_metrics=prior.base_metrics if prior is not None else column(eval_scores, "seed", GATE_SPLIT),
        eval_data=eval_meta.get("gate_data", ""),
        run_id=context.run.run_id,
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    outcome = registry.promote(candidate)
    context.log.info(f"{context.partition_key}: {outcome.reason}")
    current, history = outcome.champion, outcome.history_table()
    return versioned(
        outcome.record(candidate),
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
    code_version="summary-3",
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
                # test split; rounds evaluated on one split only recorded `<model>/<metric>`
                row[f"{model}_{metric}"] = scores.get(f"test/{model}/{metric}", scores.get(f"{model}/{metric}"))
                for end in ("low", "high"):
                    row[f"{model}_{metric}_{end}"] = scores.get(f"test/{model}/{metric}_{end}")
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
