"""One improvement round as plain functions over an artifact store (Dagster-free).

Each asset calls one of these in a few lines, and the benchmarks call the same ones, so a benchmark measures what
the product runs. A step takes its stage's settings, the round key (every seed of the round derives from it), the
models or verifier it needs, and the artifact store it memoises and resumes in; it returns what it made plus the
numbers a person reads about it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import torch

from si_assets.collection.images import (
    ImagePool,
    ImagePoolSettings,
    build_pool,
    decode_images,
    pool_entries,
    round_slice,
    world_pool,
)
from si_assets.collection.sampling import POSITIVE, SamplingSettings, decode_plan, plan_requests
from si_assets.collection.validation import InputLimits
from si_assets.evaluation.data import EvalData, EvalSettings, Split
from si_assets.evaluation.evaluate import evaluate_amber, evaluate_model
from si_assets.evaluation.results import results_json
from si_assets.evaluation.uncertainty import counts_of, intervals, paired_delta_intervals
from si_assets.modeling.chat import patch_size, prompt_token_counter
from si_assets.modeling.preflight import (
    image_tokens_fit,
    model_runs_without_image,
    processes_fit,
    verifier_text_length,
)
from si_assets.optimization.distributed import prepare_job
from si_assets.optimization.dpo import (
    DPOResult,
    DPOSettings,
    TrainingSettings,
    as_trained,
    compute_reference,
    save_trained,
    train_dpo,
)
from si_assets.optimization.reference_cache import ReferenceLookup, cached_reference
from si_assets.optimization.self_training import self_sft_pairs
from si_assets.optimization.warm_start import TrainedOn, WarmStart, plan_warm_start
from si_assets.organization.balance import omission_edit
from si_assets.organization.support import REGION_CUT, region_support_edit
from si_assets.organization.verification import (
    DISCARDED,
    REVERSED,
    PairEdit,
    VerificationSettings,
    clip_score_fn,
    decision_counts,
    organize_pairs,
    score_responses,
    training_pairs,
)
from si_assets.rounds.champion import Promotion
from si_assets.rounds.gate import GateDecision, GatePolicy, gate_decision
from si_assets.rounds.naming import round_number, round_seed
from si_assets.storage import ArtifactStore, Checkpoint, content_hash
from si_assets.storage.chunks import WHOLE, ChunkStats, Shard, run_in_chunks
from si_assets.storage.memo import config_key, memoised_result
from si_assets.verifier.clip import BOOTSTRAP, ClipScorer

# Code versions: a change in what a step computes changes its version, so memoised results are not reused.
DECODER_CODE_VERSION = "collect-3"
SCORING_VERSION = "verify-2"  # the stored CLIP scores: unchanged scores are reused across pair rules
REFERENCE_CODE_VERSION = "reference-logps-2"
EVAL_CODE_VERSION = "eval-5"  # eval-5: CHAIR's rules on COCO data, every mention counted

Log = Callable[[str], None]


class RoundError(ValueError):
    """A step refuses its inputs before any compute; the message says what to change."""


def _quiet(_: str) -> None:
    pass


class ModelLoader(Protocol):
    """What loads a checkpoint: the `models` resource, or anything with the same two methods."""

    def load(self, source: str | Path, device: torch.device | None = None) -> tuple[Any, Any]: ...

    def load_processor(self, source: str | Path) -> Any: ...


def table_version(table: pl.DataFrame) -> str:
    return content_hash(table)[:16]


# --- collection -------------------------------------------------------------------------------------------------


def admit_images(settings: ImagePoolSettings, processor: Any, world_improve: pl.DataFrame, round_key: str) -> ImagePool:
    """The round's image pool (world split, folder or manifest; the round's own slice of it with
    `images_per_round`), every file, image and prompt checked against the limits and the seed's own tokenizer; what
    cannot be used is in `rejects` with a reason."""
    limits = InputLimits(
        **{name: getattr(settings, name) for name in InputLimits.model_fields}
        | {"min_side": max(settings.min_side, patch_size(processor))}
    )
    count_tokens = prompt_token_counter(processor)
    number = round_number(round_key)
    if settings.source == "world":
        rows = round_slice(range(world_improve.height), settings.images_per_round, number)
        return world_pool(world_improve[rows], limits, count_tokens)
    entries = round_slice(pool_entries(settings), settings.images_per_round, number)
    return build_pool(entries, settings.folder, settings.prompts, limits, count_tokens)


def sample(
    settings: SamplingSettings,
    models: ModelLoader,
    store: ArtifactStore,
    seed_checkpoint: Checkpoint,
    images: pl.DataFrame,
    round_key: str,
    device: torch.device,
    dtype: torch.dtype,
    shard: Shard = WHOLE,
    log: Log = _quiet,
) -> tuple[pl.DataFrame, ChunkStats]:
    """Positives and controlled-hallucination negatives of every image (the shard's chunks of the request plan),
    decoded or read back from the store. The model is loaded only when a chunk is missing, so a merge after
    finished shards reads tables only."""
    plan = plan_requests(
        images, settings.n_samples, settings.n_negatives, settings, round_seed(settings.seed, round_key)
    )
    loaded: list = []

    def decode(chunk: pl.DataFrame) -> pl.DataFrame:
        if not loaded:  # the first missing chunk: model and images are needed only now
            model, processor = models.load(seed_checkpoint.path, device=device)
            model_runs_without_image(model, processor)
            loaded.extend((model, processor, decode_images(images)))
        model, processor, image_by_id = loaded
        version = seed_checkpoint.version
        return decode_plan(
            model, processor, chunk, image_by_id, settings, version, settings.batch_size, log, settings.decoder
        )

    # Everything a chunk's responses depend on besides its own rows (which name the chunk).
    key = config_key(
        seed_checkpoint.version,
        table_version(images),
        settings.sampler_key(),
        f"{device.type}/{dtype}/batch{settings.batch_size}/{settings.decoder}",
        DECODER_CODE_VERSION,
    )
    return run_in_chunks(store, "collected_responses", key, plan, settings.chunk_size, decode, log, shard)


# --- organization -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    pairs: pl.DataFrame
    verifier_version: str
    texts_past_verifier_context: int
    scored_responses: int
    score_chunks_reused: int
    seconds: float

    def decisions(self) -> dict[str, int]:
        return decision_counts(self.pairs)

    def rates(self) -> dict[str, float]:
        """Reversed and discarded shares of the caption pairs (the rule decided those; probes restate them)."""
        counts = self.decisions()
        total = max(1, sum(counts.values()))
        return {"reverse_rate": counts[REVERSED] / total, "discard_rate": counts[DISCARDED] / total}


def verify(
    settings: VerificationSettings,
    scorer: ClipScorer,
    device_name: str,
    store: ArtifactStore,
    clip_checkpoint_version: str,
    responses: pl.DataFrame,
    images: pl.DataFrame,
    round_key: str,
    edit: PairEdit | None = None,
    log: Log = _quiet,
) -> Verified:
    """CLIP scores every response (in resumable chunks, reused across pair rules), then the pair rule turns them
    into chosen / rejected pairs: reversed when the negative scores higher, discarded when closer than `margin`."""
    started = time.perf_counter()
    rule = settings.rule().model_copy(update={"seed": round_seed(settings.seed, round_key)})
    cut = verifier_text_length(
        scorer.scored_texts(responses["response"].to_list(), settings.score_mode),
        scorer.token_count,
        scorer.context_length,
        settings.max_cut_share,
    )
    decoded = decode_images(images)
    score = clip_score_fn(scorer, decoded, images["id"].to_list(), settings.score_mode)
    if settings.min_region_support:
        samples = None
        if settings.region_caption == "consensus":
            samples = responses.filter(pl.col("role") == POSITIVE).select("image_id", "response")
        to_supported = region_support_edit(
            scorer,
            decoded,
            settings.min_region_support,
            settings.region_window,
            settings.region_pairs,
            samples,
            settings.min_sample_share,
        )
        edit = then(to_supported, edit)
    if settings.omission_share:
        source_task = REGION_CUT if settings.omission_source == "consensus" else None
        omitted = omission_edit(settings.omission_share, round_seed(settings.seed, round_key), source_task)
        edit = omitted if edit is None else then(edit, omitted)
    verifier_version = settings.verifier_source().identity(clip_checkpoint_version)
    key = config_key(verifier_version, table_version(images), settings.score_mode, device_name, SCORING_VERSION)
    scored, chunks = run_in_chunks(
        store,
        "verified_pairs_scores",
        key,
        responses,
        settings.chunk_size,
        lambda chunk: score_responses(chunk, score),
        log,
    )
    pairs = organize_pairs(scored, rule, score, edit)
    if settings.verifier != BOOTSTRAP:
        verifier_version = f"{verifier_version} ({settings.verifier})"
    return Verified(pairs, verifier_version, cut, scored.height, chunks.reused, time.perf_counter() - started)


def then(first: PairEdit, second: PairEdit | None) -> PairEdit:
    """`first`, then `second` if there is one."""
    if second is None:
        return first
    return lambda pairs, score: second(first(pairs, score), score)


# --- optimization -----------------------------------------------------------------------------------------------

# torchrun through a launcher the caller owns (the asset: Dagster Pipes): (job file, processes) -> result, details
DistributedLauncher = Callable[[Path, int], tuple[DPOResult, dict]]


@dataclass(frozen=True)
class Trained:
    checkpoint: Checkpoint  # merged weights + processor; the adapter alone in `adapter/`
    pairs: pl.DataFrame  # as trained
    result: DPOResult
    reference: ReferenceLookup
    settings: DPOSettings
    warm_start: WarmStart
    distributed: dict = field(default_factory=dict)


def train(
    settings: TrainingSettings,
    models: ModelLoader,
    store: ArtifactStore,
    seed_checkpoint: Checkpoint,
    verified_pairs: pl.DataFrame,
    images: pl.DataFrame,
    round_key: str,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    launch: DistributedLauncher | None = None,
    log: Log = _quiet,
    previous: Checkpoint | None = None,
) -> Trained:
    """The seed plus a LoRA adapter trained by DPO on the verified pairs (or the configured baseline), merged.
    Reference log-probs are computed once per (seed, pairs, length settings) and cached in the store. `previous`:
    this round's earlier trained checkpoint, whose adapter continues when few of the pairs changed (a warm start)."""
    dpo = settings.dpo(round_seed(settings.seed, round_key))
    model, processor = models.load(seed_checkpoint.path)
    image_by_id = decode_images(images)
    if settings.optimization == "self_sft":
        pairs = self_sft_pairs(model, processor, images, image_by_id, log)
    else:
        pairs = as_trained(training_pairs(verified_pairs), dpo)
    image_tokens_fit(
        processor,
        [image_by_id[i] for i in pairs["image_id"]],
        pairs["prompt"].to_list(),
        [max(c, r, key=len) for c, r in zip(pairs["chosen"], pairs["rejected"])],
        dpo.max_length,
    )
    if settings.launcher == "torchrun":
        processes_fit(settings.processes, device)
        if launch is None:
            raise RoundError("launcher 'torchrun' needs a launcher for the worker processes")
    trained_on = TrainedOn.of(seed_checkpoint.version, config_key(dpo), pairs)
    if settings.launcher == "torchrun":
        warm = WarmStart("torchrun workers train from the seed")
    else:
        adapter = Path(previous.path) / "adapter" if previous is not None else None
        # most pairs are learned already: a small step on the rest, not a new schedule
        rate = dpo.learning_rate * settings.warm_start_lr_scale
        warm = plan_warm_start(pairs, trained_on, adapter, settings.warm_start_max_change, dpo.seed, rate)
    trainer_settings = dpo.model_copy(update={"learning_rate": warm.learning_rate}) if warm.warm else dpo
    log(f"warm start: {warm.reason}")
    work, merged = store.staging_dir(), store.staging_dir()

    def reference(missing: pl.DataFrame) -> pl.DataFrame:
        return compute_reference(model, processor, missing, image_by_id, dpo, work / "ref", log)

    # Per seed and length settings; pairs are looked up by content, so re-organized pairs reuse what they share.
    cache_key = config_key(seed_checkpoint.version, str(dpo.max_length), str(dpo.ld_alpha), REFERENCE_CODE_VERSION)
    try:  # the trainer's scratch folder goes, whether training succeeds or not
        ref = cached_reference(store, cache_key, pairs, reference)
        log(f"reference log-probs: {ref.computed} pairs computed, {ref.reused} from the cache")
        if settings.launcher == "torchrun":
            del model  # the workers load their own copies
            job = prepare_job(
                seed_checkpoint.path,
                pairs,
                images,
                ref.table,
                dpo,
                settings.processes,
                merged,
                work / "distributed",
                device,
                dtype,
                trust_remote_code,
            )
            result, distributed = launch(job, settings.processes)
        else:
            rows = warm.rows if warm.warm else pairs
            peft_model, _, result = train_dpo(
                model,
                processor,
                rows,
                image_by_id,
                trainer_settings,
                work / "trainer",
                ref.table,
                log,
                adapter=warm.adapter_dir,
            )
            save_trained(peft_model, processor, merged, merged / "adapter", seed_checkpoint.path, trust_remote_code)
            distributed = {}
        trained_on.write(merged / "adapter")
    except BaseException:
        shutil.rmtree(merged, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Trained(Checkpoint(merged), pairs, result, ref, dpo, warm, distributed)


# --- evaluation -------------------------------------------------------------------------------------------------

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
SPLITS: tuple[Split, ...] = ("dev", "test")
GATE_SPLIT: Split = "dev"  # the gate chooses; the test split is only reported


@dataclass(frozen=True)
class Scored:
    """One checkpoint's evaluation on one split."""

    metrics: dict[str, float]
    captions: pl.DataFrame  # per image: caption, objects, mentions and the counts the intervals resample
    reused: bool


def score_checkpoint(
    settings: EvalSettings, models: ModelLoader, store: ArtifactStore, checkpoint: Checkpoint, data: EvalData, log: Log
) -> Scored:
    """Captions and yes/no answers of one checkpoint, scored (POPE, or AMBER's on AMBER data); computed once per
    (settings, checkpoint, data)."""

    def build() -> tuple[pl.DataFrame, dict]:
        model, processor = models.load(checkpoint.path)
        if data.amber is not None:
            amber = evaluate_amber(
                model, processor, data.amber, data.images, settings.batch_size, settings.max_new_tokens, log
            )
            return amber.captions, amber.metrics
        result = evaluate_model(
            model,
            processor,
            data.ids,
            data.images,
            data.truths,
            data.vocab,
            settings.caption_prompt,
            pope_per_image=settings.pope_per_image,
            seed=settings.seed,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
            log=log,
            questions=data.questions,
            pope_truths=data.annotated,
        )
        return result.captions, result.metrics

    key = config_key(settings.metrics_key(), checkpoint.version, data.fingerprint, EVAL_CODE_VERSION)
    captions, metrics, _, reused = memoised_result(store, "eval", key, build)
    return Scored(metrics, captions, reused)


@dataclass(frozen=True)
class SplitEvaluation:
    """Seed and trained model on one split, and how sure their difference is."""

    data: EvalData
    seed: Scored
    trained: Scored

    @cached_property
    def bounds(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Per column (`seed`, `trained`, `delta`) and metric, the 95% bootstrap interval; `delta` (trained − seed)
        is paired: both models scored on the same resampled images. Computed once per evaluation."""
        if not self.seed.captions["id"].equals(self.trained.captions["id"]):
            raise RoundError("seed and trained model were scored on different images; evaluate both on the same data")
        seed, trained = counts_of(self.seed.captions), counts_of(self.trained.captions)
        return {"seed": intervals(seed), "trained": intervals(trained), "delta": paired_delta_intervals(seed, trained)}

    def side_by_side(self) -> pl.DataFrame:
        """Seed and trained captions of the same images, with the true objects."""
        seed = self.seed.captions.select("id", "objects", seed="caption")
        return seed.join(self.trained.captions.select("id", trained="caption"), on="id")


def metrics_table(split: str, results: dict[str, dict[str, float]], bounds: dict[str, dict]) -> pl.DataFrame:
    """One row per metric of one split: a column per model, `delta` = trained − seed, and `<column>_low` /
    `<column>_high` where an interval is known (`bounds`: column -> metric -> (low, high))."""
    names = [m for m in HEADLINE if all(m in r for r in results.values())]
    names += sorted({k for r in results.values() for k in r} - set(names) - {"n_captions"})
    columns: dict[str, list] = {"split": [split] * len(names), "metric": names}
    for model, values in results.items():
        columns[model] = [values.get(m) for m in names]
    both = [(results["trained"].get(m), results["seed"].get(m)) for m in names]
    columns["delta"] = [t - s if t is not None and s is not None else None for t, s in both]
    for column, per_metric in bounds.items():
        columns[f"{column}_low"] = [per_metric[m][0] if m in per_metric else None for m in names]
        columns[f"{column}_high"] = [per_metric[m][1] if m in per_metric else None for m in names]
    return pl.DataFrame(columns, schema_overrides={c: pl.Float64 for c in columns if c not in ("split", "metric")})


def column(table: pl.DataFrame, model: str, split: str = GATE_SPLIT) -> dict[str, float]:
    """A model's metrics on one split, as a dict."""
    rows = table.filter(pl.col("split") == split)
    return dict(zip(rows["metric"], rows[model]))


@dataclass(frozen=True)
class Evaluation:
    splits: dict[str, SplitEvaluation]  # dev and test
    table: pl.DataFrame  # split × metric: base, seed, trained, delta and their intervals
    base_metrics: dict[str, float]  # the chain's base model on the gate's split
    gate: GateDecision  # decided on the dev split alone
    versions: dict[str, str]  # seed, trained -> checkpoint version

    def results_documents(self) -> dict[str, dict]:
        """`<split>/<model>` -> that model's results.json on that split (`si_assets.evaluation.results`)."""
        documents = {}
        for split, evaluation in self.splits.items():
            for model, scored in (("seed", evaluation.seed), ("trained", evaluation.trained)):
                documents[f"{split}/{model}"] = results_json(
                    scored.metrics,
                    evaluation.bounds[model],
                    counts_of(scored.captions),
                    model=model,
                    model_version=self.versions[model],
                    split=split,
                    data_fingerprint=evaluation.data.fingerprint,
                    data_source=evaluation.data.source,
                    chair_variant=evaluation.data.chair_variant,
                )
        return documents


def write_results(store: ArtifactStore, evaluation: Evaluation, round_key: str) -> dict[str, str]:
    """Each model's results.json per split into the store, named by the round and the document's content (nothing
    is overwritten); returns `<split>/<model>` -> its path in the store."""
    paths = {}
    for name, document in evaluation.results_documents().items():
        data = json.dumps(document, indent=2, sort_keys=True).encode()
        path = f"eval_results/{round_key}/{name}/{hashlib.sha256(data).hexdigest()[:16]}/results.json"
        store.write_bytes(path, data)
        paths[name] = path
    return paths


def evaluate(
    settings: EvalSettings,
    policy: GatePolicy,
    models: ModelLoader,
    store: ArtifactStore,
    seed_checkpoint: Checkpoint,
    trained: Checkpoint,
    world_splits: dict[str, pl.DataFrame],
    champion_before: Promotion | None,
    log: Log = _quiet,
) -> Evaluation:
    """Base, seed and trained side by side on the held-out dev and test splits (the world's, the configured
    COCO-style sets, or AMBER's), with bootstrap intervals, and the promotion gate's verdict on dev. The base's
    metrics come from the chain's first promotion, so every round of a chain is gated against the same base."""
    try:
        data = {split: settings.data(split, world_splits.get(split, pl.DataFrame())) for split in SPLITS}
    except (ValueError, OSError) as exc:
        raise RoundError(f"evaluation data: {exc}") from exc
    if data["dev"].fingerprint == data["test"].fingerprint:
        raise RoundError("the dev and test sets are the same data: the test split must never be used for a choice")
    gate_data = data[GATE_SPLIT].fingerprint[:16]
    if champion_before is not None and champion_before.eval_data and champion_before.eval_data != gate_data:
        raise RoundError(
            f"{champion_before.round}'s champion and the base model were scored on evaluation data "
            f"{champion_before.eval_data}, this round's is {gate_data}; the gate would compare across data sets. "
            "Evaluate on the same data (eval_scores config), or start a new chain of rounds from a new base."
        )
    results = {
        split: SplitEvaluation(
            split_data,
            score_checkpoint(settings, models, store, seed_checkpoint, split_data, log),
            score_checkpoint(settings, models, store, trained, split_data, log),
        )
        for split, split_data in data.items()
    }
    gated = results[GATE_SPLIT]
    base = champion_before.base_metrics if champion_before is not None else gated.seed.metrics
    tables = []
    for split, result in results.items():
        models_metrics = {"seed": result.seed.metrics, "trained": result.trained.metrics}
        if split == GATE_SPLIT:
            models_metrics = {"base": base, **models_metrics}
        bounds = result.bounds
        tables.append(metrics_table(split, models_metrics, bounds))
    table = pl.concat(tables, how="diagonal_relaxed")
    gate = gate_decision(gated.seed.metrics, gated.trained.metrics, base, policy, gated.bounds["delta"])
    return Evaluation(results, table, base, gate, {"seed": seed_checkpoint.version, "trained": trained.version})
