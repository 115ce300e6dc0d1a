"""Evaluation stage: object hallucination of the seed (and later the trained model) on held-out images."""

import dagster as dg
import polars as pl

from resources import VisionLanguageModels
from si_assets.assets.common import EVALUATION, markdown_table, preview, versioned
from si_assets.evaluation.evaluate import evaluate_model
from si_assets.evaluation.metrics import ObjectVocabulary
from si_assets.storage import Checkpoint
from si_assets.world import EVAL_PROMPT, decode_png
from si_assets.world.vocabulary import world_vocabulary

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
    caption_prompt: str = EVAL_PROMPT
    pope_per_image: int = 2
    batch_size: int = 64
    max_new_tokens: int = 32
    seed: int = 0


def metrics_table(results: dict[str, dict[str, float]]) -> pl.DataFrame:
    """One row per metric, one column per model, and `delta` (last model − first) when there are two."""
    names = [m for m in HEADLINE if all(m in r for r in results.values())]
    names += sorted({k for r in results.values() for k in r} - set(names) - {"n_captions"})
    table = pl.DataFrame({"metric": names, **{model: [r.get(m) for m in names] for model, r in results.items()}})
    if len(results) == 2:
        first, last = list(results)
        table = table.with_columns(delta=pl.col(last) - pl.col(first))
    return table


@dg.asset(group_name=EVALUATION, code_version="eval-2")
def eval_scores(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    models: VisionLanguageModels,
    seed_checkpoint: Checkpoint,
    trained_model: Checkpoint,
    world_eval: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Seed vs trained, side by side with deltas, on the held-out `eval` split: object precision
    (1 − CHAIR_i), recall, F1, CHAIR_s and POPE (random / popular / adversarial)."""
    vocab = ObjectVocabulary.from_kinds(world_vocabulary(world_eval)[0])
    images = [decode_png(b) for b in world_eval["image_png"]]
    results, captions = {}, {}
    for name, checkpoint in (("seed", seed_checkpoint), ("trained", trained_model)):
        model, processor = models.load(checkpoint.path)
        result = evaluate_model(
            model,
            processor,
            world_eval["id"].to_list(),
            images,
            world_eval["objects"].to_list(),
            vocab,
            config.caption_prompt,
            pope_per_image=config.pope_per_image,
            seed=config.seed,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            log=context.log.info,
        )
        results[name], captions[name] = result.metrics, result.captions
    table = metrics_table(results)
    headline = table.filter(pl.col("metric").is_in(HEADLINE))
    context.log.info("evaluation on held-out images:\n" + str(headline))
    side_by_side = (
        captions["seed"]
        .select("id", "objects", seed="caption")
        .join(captions["trained"].select("id", trained="caption"), on="id")
    )
    return versioned(
        table,
        eval_table=dg.MetadataValue.md(markdown_table(headline)),
        captions=preview(side_by_side, rows=10),
        images=len(images),
        seed_checkpoint_version=seed_checkpoint.version,
        trained_model_version=trained_model.version,
        **{f"{name}/{m}": float(results[name][m]) for name in results for m in HEADLINE},
        **{f"delta/{m}": float(results["trained"][m] - results["seed"][m]) for m in HEADLINE},
    )
