"""Does one improvement round really reduce hallucination, and more than every baseline?

Every variant is a set of the product's own settings (SamplingSettings, VerificationSettings, TrainingSettings) run
through the product's round API (`si_assets.rounds.steps`: sample, verify, train, evaluate). A round seed is the
whole round's: sampling, pair rule, probes and DPO all follow it; `--world-seeds` rebuild the world and its bootstrap
seed + CLIP (through Dagster, memoised in the store). Every named baseline trains as many optimizer steps as the loop
in the same world and round seed, computed from the rows each trains on (probes included), not from epochs. Each run
is scored on the world's `dev` and `test` splits; the tables report `test` (never used for a choice) with bootstrap
intervals over its images, and means over runs with t-intervals. Labels of `improve` are read only by the variants
marked REFERENCE or DIAGNOSIS and to diagnose the pairs, never by the loop.

    .venv/bin/python bench/round_ablation.py --world-seeds 0 1 2 --seeds 0 1 2 \\
        --variants loop composed_sft self_sft no_verification random_negatives noisy_supervised clean_supervised \\
        --out docs/results/baselines          # writes baselines.csv (one row per run) and baselines.md (the table)
    .venv/bin/python bench/round_ablation.py --variants loop oracle_pick true_caption  # better chosen data?

A stopped run resumes: rows already in the CSV are not run again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.*` when run as a script

import dagster as dg  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from bench.prior_swaps import prior_swap_edit  # noqa: E402
from si_assets.assets.bootstrap import bootstrap_clip, bootstrap_seed_model  # noqa: E402
from si_assets.assets.world import world_splits  # noqa: E402
from si_assets.collection.images import decode_images  # noqa: E402
from si_assets.collection.sampling import SamplingSettings  # noqa: E402
from si_assets.definitions import build_resources  # noqa: E402
from si_assets.evaluation.data import EvalSettings  # noqa: E402
from si_assets.evaluation.metrics import ObjectVocabulary, caption_scores  # noqa: E402
from si_assets.evaluation.uncertainty import counts_of, intervals, paired_delta_intervals  # noqa: E402
from si_assets.modeling.generation import continue_without_image, generate_greedy  # noqa: E402
from si_assets.optimization.dpo import LANGUAGE_MODEL_PROJECTIONS as LM_LORA  # noqa: E402
from si_assets.optimization.dpo import DPOResult, TrainingSettings, epochs_for_steps, optimizer_steps  # noqa: E402
from si_assets.optimization.self_training import sft_pairs  # noqa: E402
from si_assets.organization.composition import extra_candidates  # noqa: E402
from si_assets.organization.probes import PROBE, YES  # noqa: E402
from si_assets.organization.segments import join_segments, segment_positions, segment_votes  # noqa: E402
from si_assets.organization.verification import (  # noqa: E402
    CAPTION,
    KEPT,
    PairRule,
    VerificationSettings,
    decision_counts,
    training_pairs,
)
from si_assets.rounds.naming import round_key as round_key_of  # noqa: E402
from si_assets.rounds.steps import Scored, score_checkpoint, train, verify  # noqa: E402
from si_assets.rounds.steps import sample as sample_responses  # noqa: E402
from si_assets.storage import ArtifactStore, Checkpoint  # noqa: E402
from si_assets.verifier.clip import ClipScorer, VerifierSource, load_clip  # noqa: E402
from si_assets.world import WorldSpec, improve_ground_truth, improve_true_captions  # noqa: E402

METRICS = ["precision", "recall", "f1", "chair_s", "mentions_per_caption", "pope_f1", "pope_accuracy", "pope_yes_ratio"]
ROUND = "round-0001"  # the round key every run uses; the round seed varies the round
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Variant:
    name: str
    sampling: SamplingSettings = SamplingSettings()
    verification: VerificationSettings = VerificationSettings()
    training: TrainingSettings = TrainingSettings()
    # "pairs" (verified pairs) | "noisy_supervised" (seed_train's noisy captions) | "clean_supervised" (the improve
    # images' true captions: reads labels); self-SFT is `training.optimization`
    data: str = "pairs"
    # "clip" (the loop) | diagnosis only, reads the labels: "oracle_pick" (the most precise of the same samples)
    # or "true_caption" (the image's clean caption); how far better chosen data alone would move the round
    chosen: str = "clip"
    greedy_candidate: bool = False  # the seed's greedy caption joins the N samples CLIP picks from
    consensus: tuple[int, ...] = ()  # per vote threshold, a caption of the mentions that many samples share
    prior_swapped: bool = False  # rejected = the chosen caption with a mention the image-free stream puts there
    matched: bool = True  # train the loop's optimizer steps (derived variants keep their own training length)
    note: str = ""

    def seeded(self, seed: int) -> Variant:
        """The variant with `seed` as the whole round's seed."""
        return replace(
            self,
            sampling=updated(self.sampling, seed=seed),
            verification=updated(self.verification, seed=seed),
            training=updated(self.training, seed=seed),
        )


DEFAULT = TrainingSettings()
PLAIN = VerificationSettings(**PairRule.plain().model_dump())  # best sample vs worst negative, one pair per image
LITERAL_SAMPLING = SamplingSettings(n_samples=1, n_negatives=1)
SFT = TrainingSettings(objective="sft")  # the SFT term alone on the chosen side; epochs follow the loop's steps
VARIANTS = {
    v.name: v
    for v in [
        Variant("loop",
                note="the defaults: CLIP composes the chosen caption from the best sample's segments and the others'; "
                     "2 best candidates vs 2 CLIP-worst negatives, one yes/no probe per image; DPO + SFT term, LoRA on "
                     "every linear layer"),
        Variant("composed_sft", training=SFT,
                note="the loop's own pairs, SFT on their chosen side only (captions and probe answers): what the "
                     "preference term adds"),
        Variant("self_sft", training=SFT.model_copy(update={"optimization": "self_sft"}),
                note="label-free self-training on the seed's greedy captions"),
        Variant("no_verification", verification=VerificationSettings(verification="none"),
                note="pairs as generated, nothing composed"),
        Variant("random_negatives", verification=VerificationSettings(negatives="random"),
                note="negative = another image's response"),
        Variant("noisy_supervised", data="noisy_supervised", training=SFT,
                note="REFERENCE (reads the bootstrap's labels): SFT on seed_train's captions, noisy as the seed "
                     "learned them"),
        Variant("clean_supervised", data="clean_supervised", training=SFT,
                note="REFERENCE (reads labels): SFT on the true captions of the same unlabeled images"),
        Variant("best_of_n", verification=PLAIN,
                training=DEFAULT.model_copy(update={"lora_targets": LM_LORA}),
                note="CLIP-best of the samples vs the CLIP-worst negative, language-model LoRA"),
        Variant("literal", sampling=LITERAL_SAMPLING, verification=PLAIN,
                training=DEFAULT.model_copy(update={"rpo_alpha": 0.0}),
                note="1 sample, CLIP swap/discard, plain DPO (the paper's recipe)"),
        Variant("literal_sft", sampling=LITERAL_SAMPLING, verification=PLAIN,
                note="1 sample, CLIP swap/discard, DPO + SFT term"),
        Variant("prior_swapped", prior_swapped=True,
                note="rejected = the chosen caption with the mention the image-free stream says at that place"),
        Variant("oracle_pick", verification=PLAIN, chosen="oracle_pick",
                note="DIAGNOSIS (reads labels): chosen = the most precise of the same samples"),
        Variant("true_caption", verification=PLAIN, chosen="true_caption",
                note="DIAGNOSIS (reads labels): chosen = the image's clean caption"),
    ]
}  # fmt: skip
DEFAULT_VARIANTS = [
    "loop", "composed_sft", "self_sft", "no_verification", "random_negatives", "noisy_supervised", "clean_supervised"
]  # fmt: skip


def updated(settings, **changes):
    """A validated copy with some fields changed."""
    return type(settings)(**{**settings.model_dump(), **changes})


def derive(base: Variant, name: str, overrides: dict) -> Variant:
    """A variant of `base` from JSON overrides; nested keys for sampling, verification and training."""
    nested = {"sampling": base.sampling, "verification": base.verification, "training": base.training}
    fields = {k: updated(nested[k], **v) if k in nested else v for k, v in overrides.items()}
    # the same optimizer steps as its base, unless the training length is the experiment
    matched = base.matched and "epochs" not in overrides.get("training", {})
    return replace(base, name=name, note=json.dumps(overrides), matched=matched, **fields)


@dataclass
class Bench:
    world: dict[str, pl.DataFrame]
    spec: WorldSpec
    store: ArtifactStore
    models: object  # the `models` resource: loads checkpoints on the compute device
    seed: Checkpoint
    clip_dir: Path
    clip_version: str  # what CLIP scores are cached under: the stored bootstrap's version, or a folder's hash
    vocab: ObjectVocabulary
    device: torch.device = torch.device("cpu")
    greedy: dict[str, dict[str, str]] = field(default_factory=dict)  # checkpoint version -> image id -> caption

    def load(self, checkpoint: Checkpoint):
        return self.models.load(checkpoint.path)

    def evaluate(self, checkpoint: Checkpoint) -> dict[str, Scored]:
        """The checkpoint on the dev and test splits, as `eval_scores` scores it (memoised in the store)."""
        settings = EvalSettings()
        return {
            split: score_checkpoint(
                settings, self.models, self.store, checkpoint, settings.data(split, self.world[split]), print
            )
            for split in SPLITS
        }


def build_bench(images: int, world: dict, clip: dict, seed_model: dict) -> Bench:
    """World and bootstrap models through Dagster (memoised: reused when `make demo` built them)."""
    resources = build_resources(device="cpu")
    configs = {"world_splits": world, "bootstrap_clip": clip, "bootstrap_seed_model": seed_model}
    result = dg.materialize(
        [world_splits, bootstrap_seed_model, bootstrap_clip],
        resources=resources,
        instance=dg.DagsterInstance.get(),
        run_config={"ops": {op: {"config": config} for op, config in configs.items()}},
    )
    splits = {s: result.asset_value(f"world_{s}") for s in ("seed_train", "improve", *SPLITS)}
    splits["improve"] = splits["improve"].head(images)
    store = resources["store"].get()  # the checkpoints as stored (the outputs' staging folders are gone)
    clip_dir = Path(store.local_checkpoint(store.head("bootstrap_clip")).path)
    spec = WorldSpec(**world)
    return Bench(
        world=splits,
        spec=spec,
        store=store,
        models=resources["models"],
        seed=store.local_checkpoint(store.head("bootstrap_seed_model")),
        clip_dir=clip_dir,
        clip_version=clip_dir.name,  # a stored version's folder is named by its hash
        vocab=ObjectVocabulary.from_kinds(spec.kinds),
    )


def responses_for(
    bench: Bench, settings: SamplingSettings, checkpoint: Checkpoint, round_key: str = ROUND
) -> pl.DataFrame:
    """The round's positives and negatives from `checkpoint`, decoded by the product's sampling step (chunks are
    cached in the store, so settings decoded before are read back)."""
    started = time.perf_counter()
    improve = bench.world["improve"]
    responses, _ = sample_responses(
        settings, bench.models, bench.store, checkpoint, improve, round_key, bench.device, torch.float32, log=print
    )
    print(f"{responses.height} responses in {time.perf_counter() - started:.0f}s", flush=True)
    return responses


def with_greedy_candidate(bench: Bench, responses: pl.DataFrame, checkpoint: Checkpoint) -> pl.DataFrame:
    """The responses plus one more positive per image: the model's greedy caption (sample number N)."""
    if checkpoint.version not in bench.greedy:
        improve = bench.world["improve"]
        by_id = decode_images(improve)
        ids, prompts = improve["id"].to_list(), improve["prompt"].to_list()
        captions = generate_greedy(*bench.load(checkpoint), [by_id[i] for i in ids], prompts)
        bench.greedy[checkpoint.version] = dict(zip(ids, captions))
    positives = responses.filter(pl.col("role") == "positive")
    greedy = extra_candidates(positives, bench.greedy[checkpoint.version]).with_columns(temperature=pl.lit(0.0))
    return pl.concat([responses, greedy])


def consensus_response(samples: list[str], min_votes: int) -> str | None:
    """Self-consistency without a judge: the segments ("a red circle") at least `min_votes` of one image's samples
    name, in their mean position; None when none has the votes."""
    positions = segment_positions(samples)
    agreed = [s for s, votes in segment_votes(samples).items() if votes >= min_votes]
    return join_segments(sorted(agreed, key=positions.__getitem__)) if agreed else None


def with_consensus_candidates(responses: pl.DataFrame, thresholds, truth, vocab) -> pl.DataFrame:
    """The responses plus, per image and vote threshold, the caption of the segments that many samples share."""
    positives = responses.filter(pl.col("role") == "positive")
    groups = {image_id: group["response"].to_list() for (image_id,), group in positives.group_by("image_id")}
    for votes in thresholds:
        texts = {image_id: consensus_response(samples, votes) for image_id, samples in groups.items()}
        made = extra_candidates(positives, {i: t for i, t in texts.items() if t})
        s = caption_scores(made["response"].to_list(), [truth[i] for i in made["image_id"]], vocab)
        print(f"consensus >= {votes}: {made.height} captions, P {s.precision:.3f} R {s.recall:.3f}")
        positives = pl.concat([positives, made])  # the next threshold's captions get the next sample number
        responses = pl.concat([responses, made])
    return responses


def labelled_chosen(kept: pl.DataFrame, responses: pl.DataFrame, mode: str, bench: Bench, truth: dict) -> pl.DataFrame:
    """The pairs with their chosen response replaced by one that reads the labels (diagnosis only)."""
    if mode == "clip":
        return kept
    if mode == "true_caption":
        better = improve_true_captions(bench.spec)
    elif mode == "oracle_pick":

        def precision_then_hits(image_id: str, text: str) -> tuple[float, int]:
            mentions = bench.vocab.mentions(text)
            hits = len(set(mentions) & set(truth[image_id]))
            return hits / max(1, len(mentions)), hits

        positives = responses.filter(pl.col("role") == "positive")
        better = {
            image_id: max(group["response"].to_list(), key=lambda text: precision_then_hits(image_id, text))
            for (image_id,), group in positives.group_by("image_id")
        }
    else:
        raise ValueError(f"unknown chosen {mode!r}; use 'clip', 'oracle_pick' or 'true_caption'")
    relabelled = pl.col("image_id").replace_strict(better)
    return kept.with_columns(chosen=pl.when(pl.col("task") == CAPTION).then(relabelled).otherwise("chosen"))  # probes


def training_data(
    bench: Bench, variant: Variant, scorer: ClipScorer, truth: dict, checkpoint: Checkpoint, round_key: str = ROUND
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(pairs, their images, diagnostics) for one round of `variant` from `checkpoint`: the product's sampling and
    verification steps, plus the variant's bench-only candidates and chosen sides."""
    improve = bench.world["improve"]
    if variant.data == "noisy_supervised":
        train_split = bench.world["seed_train"].sample(improve.height, seed=0)
        prompts = ["Describe the image."] * train_split.height
        pairs = sft_pairs(train_split["id"], prompts, train_split["caption"]).with_columns(decision=pl.lit(KEPT))
        return pairs, train_split.with_columns(prompt=pl.Series(prompts)), {}
    if variant.data == "clean_supervised":
        true = improve_true_captions(bench.spec)
        pairs = sft_pairs(improve["id"], improve["prompt"], [true[i] for i in improve["id"]])
        return pairs.with_columns(decision=pl.lit(KEPT)), improve, {}
    if variant.training.optimization == "self_sft":
        return pl.DataFrame(), improve, {}  # the training step captions the images itself
    responses = responses_for(bench, variant.sampling, checkpoint, round_key)
    if variant.greedy_candidate:
        responses = with_greedy_candidate(bench, responses, checkpoint)
    if variant.consensus:
        responses = with_consensus_candidates(responses, variant.consensus, truth, bench.vocab)
    edit = prior_swap_edit(partial(continue_without_image, *bench.load(checkpoint))) if variant.prior_swapped else None
    verified = verify(
        variant.verification, scorer, "cpu", bench.store, bench.clip_version, responses, improve, round_key, edit, print
    )
    pairs = labelled_chosen(verified.pairs, responses, variant.chosen, bench, truth)
    kept = training_pairs(pairs)

    def scores(texts: pl.Series, ids: pl.Series) -> str:
        s = caption_scores(texts.to_list(), [truth[i] for i in ids], bench.vocab)
        return f"P {s.precision:.3f} R {s.recall:.3f}"

    greedy = responses.filter((pl.col("role") == "positive") & (pl.col("sample") == 0))
    captions = kept.filter(pl.col("task") == CAPTION)
    diagnostics = {
        **decision_counts(pairs),
        "positive_0": scores(greedy["response"], greedy["image_id"]),
        "chosen": scores(captions["chosen"], captions["image_id"]),
        "rejected": scores(captions["rejected"], captions["image_id"]),
        "chosen_words": float(captions["chosen"].str.split(" ").list.len().mean()),
        "rejected_words": float(captions["rejected"].str.split(" ").list.len().mean()),
        **probe_diagnostics(kept, truth),
    }
    return pairs, improve, diagnostics


def probe_diagnostics(pairs: pl.DataFrame, truth: dict) -> dict:
    """How many yes/no probes, and how often their winning answer agrees with the labels (diagnosis only)."""
    probes = pairs.filter(pl.col("task") == PROBE)
    if probes.height == 0:
        return {}
    said_yes = probes["answer"] == YES
    rows = probes.select("image_id", "object", "answer").iter_rows()
    right = pl.Series([(a == YES) == (o in truth[i]) for i, o, a in rows])
    return {
        "probes_yes": int(said_yes.sum()),
        "probes_no": int((~said_yes).sum()),
        "probe_yes_right": round(float(right.filter(said_yes).mean() or 0), 3),
        "probe_no_right": round(float(right.filter(~said_yes).mean() or 0), 3),
    }


def run(
    variants: list[Variant],
    round_seeds: list[int],
    world_seeds: list[int],
    images: int,
    overrides: dict,
    world: dict,
    clip: dict,
    seed_model: dict,
    clip_dir: Path | None = None,
    rounds: int = 1,
    out: Path | None = None,
) -> pl.DataFrame:
    """One row per (world seed, round seed, variant) run, plus a `seed` row per world; written to `out` after every
    run, and rows already there are not run again."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use (`taskset`)
    rows = pl.read_csv(out).to_dicts() if out and out.exists() else []
    cpu = cpu_model()
    loop = VARIANTS["loop"]
    for world_seed in world_seeds:
        bench = build_bench(images, {**world, "seed": world_seed}, clip, seed_model)
        truth = improve_ground_truth(bench.spec)
        scorer = ClipScorer(*load_clip(str(clip_dir or bench.clip_dir)))
        if clip_dir:
            bench.clip_dir, bench.clip_version = clip_dir, VerifierSource(str(clip_dir)).identity("")
        seed_scores = bench.evaluate(bench.seed)
        seed_row = {
            "world": world_seed,
            "seed": -1,
            "variant": "seed",
            "settings": "",
            "cpu": cpu,
            **result_row(seed_scores, seed_scores),
        }
        rows = [r for r in rows if (r["world"], r["variant"]) != (world_seed, "seed")] + [seed_row]
        print(f"world {world_seed} seed model: {shown(seed_row)}", flush=True)
        for round_seed in round_seeds:
            loop_run = with_overrides(loop.seeded(round_seed), overrides)
            budget = None
            for variant in variants:
                variant = with_overrides(variant.seeded(round_seed), overrides)
                chain = rounds if variant.data == "pairs" else 1
                labels = [variant.name] + [f"{variant.name}@round{n}" for n in range(2, chain + 1)]
                digest = settings_digest(variant, images, bench.clip_version)
                key = lambda r: (r["world"], r["seed"], r["variant"], r.get("settings"))  # noqa: E731
                if all((world_seed, round_seed, label, digest) in {key(r) for r in rows} for label in labels):
                    continue  # measured already, with these settings
                rows = [r for r in rows if key(r)[:3] not in {(world_seed, round_seed, x) for x in labels}]
                checkpoint = bench.seed
                for number, label in enumerate(labels, start=1):
                    # the next round samples from, and trains, the model the last one made, under its own round key
                    round_key = round_key_of(number)
                    pairs, pool, diagnostics = training_data(bench, variant, scorer, truth, checkpoint, round_key)
                    if diagnostics:
                        print(f"world {world_seed} seed {round_seed} {label}: pairs {diagnostics}", flush=True)
                    run = variant
                    if variant.matched:  # the loop's first-round optimizer steps, from this variant's rows
                        budget = budget or loop_budget(bench, loop_run, scorer, truth)
                        run = with_budget(variant, budget, trained_rows(variant, pairs, pool))
                    started = time.perf_counter()
                    trained = train(
                        run.training, bench.models, bench.store, checkpoint, pairs, pool, round_key, bench.device,
                        torch.float32,
                    )  # fmt: skip
                    checkpoint = bench.store.local_checkpoint(
                        bench.store.put(trained.checkpoint, "_bench/trained", label)
                    )
                    scores = bench.evaluate(checkpoint)
                    row = {
                        "world": world_seed,
                        "seed": round_seed,
                        "variant": label,
                        "settings": digest,
                        "cpu": cpu,
                    }
                    row |= {"steps": trained.result.steps, "seconds": time.perf_counter() - started}
                    rows.append(row | result_row(scores, seed_scores))
                    if out:  # after every run, so a stopped benchmark keeps what it measured
                        pl.DataFrame(rows).write_csv(out)
                    print(f"world {world_seed} seed {round_seed} {label}: {shown(rows[-1])}", flush=True)
                    if trained.settings.objective == "dpo":
                        print(f"{label} seed {round_seed} curve: {curve_note(trained.result)}", flush=True)
    return pl.DataFrame(rows)


def cpu_model() -> str:
    """The CPU's model name and the cores this process may use: the bootstrap's weights, and so every number of a
    world, depend on its float kernels."""
    cores = len(os.sched_getaffinity(0))
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):  # "Intel(R) Xeon(R) Processor" -> "Intel Xeon"
            name = re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b", "", line.split(":", 1)[1])
            return f"{' '.join(name.split())}, {cores} cores"
    return f"{platform.processor() or platform.machine()}, {cores} cores"


def settings_digest(variant: Variant, images: int, clip_version: str) -> str:
    """What a run's numbers depend on besides the world and round seed: rerun when any of it changes. The decoder is
    left out: both decode the same tokens (tests/test_mixed_decoding.py)."""
    parts = [variant.sampling.model_dump(mode="json", exclude={"decoder"})]
    parts += [variant.verification.model_dump(mode="json")]
    # benches train anew: the warm-start settings never apply
    parts += [variant.training.model_dump(mode="json", exclude={"warm_start_max_change", "warm_start_lr_scale"})]
    blob = json.dumps(parts + [variant.data, variant.chosen, images, clip_version])
    extras = json.dumps([variant.greedy_candidate, list(variant.consensus), variant.prior_swapped, variant.matched])
    return hashlib.sha256((blob + extras).encode()).hexdigest()[:12]


def with_overrides(variant: Variant, overrides: dict) -> Variant:
    return replace(
        variant,
        sampling=updated(variant.sampling, **overrides.get("sampling", {})),
        verification=updated(variant.verification, **overrides.get("verification", {})),
        training=updated(variant.training, **overrides.get("training", {})),
    )


def trained_rows(variant: Variant, pairs: pl.DataFrame, pool: pl.DataFrame) -> int:
    """The rows a variant trains on: its non-discarded pairs (probes included), or one caption per image for
    self-training (the training step captions them)."""
    return pool.height if variant.training.optimization == "self_sft" else training_pairs(pairs).height


def loop_budget(bench: Bench, loop: Variant, scorer: ClipScorer, truth: dict) -> int:
    """The loop's optimizer steps in this world and round seed, from the rows it trains on."""
    pairs, pool, _ = training_data(bench, loop, scorer, truth, bench.seed)
    return optimizer_steps(trained_rows(loop, pairs, pool), loop.training.batch_size, loop.training.epochs)


def with_budget(variant: Variant, steps: int, rows: int) -> Variant:
    """The variant with the epochs that give its `rows` the loop's `steps`."""
    epochs = epochs_for_steps(steps, rows, variant.training.batch_size)
    return replace(variant, training=updated(variant.training, epochs=epochs))


def result_row(scores: dict[str, Scored], seed_scores: dict[str, Scored]) -> dict[str, float]:
    """Every metric on both splits, each split's precision interval over its images, and the gain over the seed
    model with its paired interval (the same images for both)."""
    row = {f"{split}_{m}": scores[split].metrics[m] for split in SPLITS for m in METRICS}
    for split in SPLITS:
        counts, seed = counts_of(scores[split].captions), counts_of(seed_scores[split].captions)
        row[f"{split}_precision_low"], row[f"{split}_precision_high"] = intervals(counts)["precision"]
        gain = paired_delta_intervals(seed, counts)
        for m in ("precision", "recall", "pope_f1"):
            row[f"{split}_gain_{m}"] = scores[split].metrics[m] - seed_scores[split].metrics[m]
            row[f"{split}_gain_{m}_low"], row[f"{split}_gain_{m}_high"] = gain[m]
    return row


def shown(row: dict) -> str:
    return " ".join(f"{m} {row[f'test_{m}']:.3f}" for m in METRICS) + (
        f" ({row['steps']} steps)" if "steps" in row else ""
    )


def curve_note(result: DPOResult) -> str:
    """The preference accuracy and reward margin early, midway and at the end: does the DPO term saturate?"""
    curve = result.curve_table()
    if curve.height == 0:
        return "(no logged steps)"
    picks = sorted({0, curve.height // 4, curve.height // 2, curve.height - 1})
    rows = curve.select("step", "rewards/accuracies", "rewards/margins").rows()
    return " | ".join(f"step {rows[i][0]:.0f}: acc {rows[i][1]:.2f} margin {rows[i][2]:.2f}" for i in picks)


# t quantiles (0.975) for the interval of a mean over runs; 1.96 beyond the table
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
T975 |= {11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086}


def mean_interval(values: pl.Series, digits: int = 3) -> str:
    """mean [95% t-interval over runs]; one run: its value alone."""
    n, mean = values.len(), float(values.mean())
    if n < 2:
        return f"{mean:.{digits}f}"
    half = T975.get(n - 1, 1.96) * float(values.std()) / n**0.5
    return f"{mean:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def summary(results: pl.DataFrame, split: str = "test") -> pl.DataFrame:
    """Per variant, over its runs (world seeds × round seeds), on one split (`dev` to choose, `test` to report):
    precision with its interval over runs and its spread, the gain over the seed model, recall, CHAIR_s and POPE F1;
    and how many runs' own paired interval put the gain above zero."""
    other = "dev" if split == "test" else "test"
    seed = results.filter(pl.col("variant") == "seed")
    rows = [
        {
            "variant": "seed model",
            "runs": seed.height,
            f"{split} precision": mean_interval(seed[f"{split}_precision"]),
            "spread": "",
            "gain (points)": "",
            "runs gaining": "",
            "recall": mean_interval(seed[f"{split}_recall"]),
            "CHAIR_s": mean_interval(seed[f"{split}_chair_s"]),
            "POPE F1": mean_interval(seed[f"{split}_pope_f1"]),
            f"{other} precision": f"{float(seed[f'{other}_precision'].mean()):.3f}",
            "steps": "",
        }
    ]
    for (name,), runs in results.filter(pl.col("variant") != "seed").group_by("variant", maintain_order=True):
        gain = runs[f"{split}_gain_precision"] * 100
        rows.append(
            {
                "variant": name,
                "runs": runs.height,
                f"{split} precision": mean_interval(runs[f"{split}_precision"]),
                "spread": f"{float(runs[f'{split}_precision'].max() - runs[f'{split}_precision'].min()) * 100:.1f}",
                "gain (points)": mean_interval(gain, digits=1),
                "runs gaining": f"{int((runs[f'{split}_gain_precision_low'] > 0).sum())}/{runs.height}",
                "recall": mean_interval(runs[f"{split}_recall"]),
                "CHAIR_s": mean_interval(runs[f"{split}_chair_s"]),
                "POPE F1": mean_interval(runs[f"{split}_pope_f1"]),
                f"{other} precision": f"{float(runs[f'{other}_precision'].mean()):.3f}",
                "steps": f"{float(runs['steps'].mean()):.0f}",
            }
        )
    return pl.DataFrame(rows)


def against_baselines(results: pl.DataFrame, split: str = "test", reference: str = "loop") -> pl.DataFrame:
    """`reference` minus each other variant run by run (same world and round seed), in points: the mean and the
    range over runs, and in how many runs `reference` is ahead on precision."""
    metrics = {"precision": "precision", "recall": "recall", "POPE F1": "pope_f1"}
    columns = [f"{split}_{m}" for m in metrics.values()]
    ours = results.filter(pl.col("variant") == reference).select("world", "seed", *columns)
    rows = []
    others = results.filter(~pl.col("variant").is_in(["seed", reference]))
    for (name,), runs in others.group_by("variant", maintain_order=True):
        paired = ours.join(runs.select("world", "seed", *columns), on=["world", "seed"], suffix="_other")
        if not paired.height:
            continue
        row = {"baseline": name, "runs": paired.height}
        for label, metric in metrics.items():
            delta = (paired[f"{split}_{metric}"] - paired[f"{split}_{metric}_other"]) * 100
            row[label] = f"{delta.mean():+.1f} [{delta.min():+.1f}, {delta.max():+.1f}]"
            if label == "precision":
                row[f"{reference} ahead"] = f"{int((delta > 0).sum())}/{paired.height}"
        rows.append(row)
    return pl.DataFrame(rows)


def markdown(table: pl.DataFrame, command: str, results: pl.DataFrame, split: str) -> str:
    """The table as README and docs show it, with the command that wrote it, and the loop against each baseline."""
    worlds = sorted(set(results["world"]))
    seeds = sorted(set(results.filter(pl.col("seed") >= 0)["seed"]))
    notes = "\n".join(f"- `{n}`: {VARIANTS[n].note}" for n in table["variant"] if n in VARIANTS)
    text = (
        f"<!-- written by: {command} -->\n"
        f"The {split} split, world seeds {worlds} × round seeds {seeds}; "
        "mean over runs [95% t-interval]; spread = max − min precision over runs, in points; runs gaining = runs "
        "whose own paired bootstrap interval of the precision gain lies above zero.\n\n"
        + markdown_rows(table)
        + "\n\n"
        + notes
        + "\n"
    )
    if "cpu" in results.columns:  # a world's bootstrap, and so its every number, depends on the CPU's float kernels
        cpus = results.group_by("world").agg(pl.col("cpu").drop_nulls().unique().sort()).sort("world")
        text += (
            "\nMeasured on: "
            + "; ".join(f"world {w}: {' / '.join(c) or 'not recorded'}" for w, c in cpus.iter_rows())
            + ".\n"
        )
    versus = against_baselines(results, split)
    if versus.height:
        text += (
            "\nThe loop minus each baseline in the same world and round seed, in points: mean [lowest, highest] "
            f"over runs.\n\n{markdown_rows(versus)}\n"
        )
    return text


def markdown_rows(table: pl.DataFrame) -> str:
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in table.iter_rows())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        nargs="*",
        default=DEFAULT_VARIANTS,
        choices=list(VARIANTS),
    )
    parser.add_argument(
        "--derive",
        nargs="+",
        default=[],
        metavar="NAME=JSON",
        help='extra variants of --base, e.g. neg35=\'{"sampling": {"mu_neg": 0.35}, "training": {"ld_alpha": 0.5}}\'',
    )
    parser.add_argument(
        "--base",
        default="loop",
        choices=list(VARIANTS),
        help="the variant --derive changes",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="round seeds (the whole round's)")
    parser.add_argument("--world-seeds", nargs="+", type=int, default=[0], help="worlds, each with its own bootstrap")
    parser.add_argument("--images", type=int, default=1500, help="unlabeled images used (the improve split's head)")
    for stage, example in (("sample", '{"n_samples": 4}'), ("verify", '{"margin": 0.01}'), ("train", '{"epochs": 3}')):
        parser.add_argument(
            f"--{stage}", type=json.loads, default={}, help=f"settings overrides for every variant, e.g. '{example}'"
        )
    parser.add_argument("--world", type=json.loads, default={}, help="WorldConfig overrides as JSON")
    parser.add_argument("--clip", type=json.loads, default={}, help="bootstrap_clip config overrides as JSON")
    parser.add_argument(
        "--seed-model",
        type=json.loads,
        default={},
        help='bootstrap_seed_model config overrides as JSON, e.g. \'{"architecture": {"text_layers": 4}}\'',
    )
    parser.add_argument("--clip-dir", type=Path, help="score with this open_clip folder instead of the bootstrap CLIP")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per training seed (pair-based variants)")
    parser.add_argument(
        "--split",
        choices=["dev", "test"],
        default="test",
        help="the table's split: dev to choose a default, test to report",
    )
    parser.add_argument("--report-only", action="store_true", help="write OUT.md from the rows in OUT.csv; run nothing")
    parser.add_argument("--out", type=Path, help="write OUT.csv (one row per run) and OUT.md (the summary table)")
    args = parser.parse_args()
    csv = args.out.with_suffix(".csv") if args.out else None
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    variants = [VARIANTS[v] for v in args.variants]
    for spec in args.derive:
        name, overrides = spec.split("=", 1)
        variants.append(derive(VARIANTS[args.base], name, json.loads(overrides)))
    if args.report_only:  # the table from the rows measured so far
        results = pl.read_csv(csv)
    else:
        results = run(
            variants,
            args.seeds,
            args.world_seeds,
            args.images,
            {"sampling": args.sample, "verification": args.verify, "training": args.train},
            args.world,
            args.clip,
            args.seed_model,
            args.clip_dir,
            args.rounds,
            csv,
        )
    table = summary(results, args.split)
    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=250):
        print(table)
    if args.out:
        given = [a for a in sys.argv[1:] if a != "--report-only"]  # the command that measures the rows
        command = ".venv/bin/python bench/round_ablation.py " + shlex.join(given)
        args.out.with_suffix(".md").write_text(markdown(table, command, results, args.split))
        print(f"wrote {csv} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
