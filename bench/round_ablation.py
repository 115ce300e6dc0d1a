"""Does one improvement round really reduce hallucination, and more than every baseline?

Every variant is a set of the product's own settings (SamplingSettings, VerificationSettings, TrainingSettings) run
through the product's round API (`si_assets.rounds.steps`: sample, verify, train, evaluate), over several training
seeds, each evaluated on the held-out split. The world and the bootstrap seed + CLIP come from Dagster (reused when
`make demo` built them); decoded responses, CLIP scores and reference log-probs are cached in the artifact store, so
variants that share a setting share its work. Baselines: no verification, random negatives, label-free self-SFT,
the literal recipe (1 sample, plain DPO); as a reference only, supervised training on `seed_train` captions with the
same trainer and steps. Labels of `improve` are read only to diagnose the pairs (precision of chosen / rejected) and
by the diagnosis variants that say so, never by the loop.

    .venv/bin/python bench/round_ablation.py [--seeds 0 1 2] [--variants loop self_sft ...] [--out FILE.csv]
    .venv/bin/python bench/round_ablation.py --variants loop oracle_pick true_caption  # better chosen data?
"""

from __future__ import annotations

import argparse
import json
import os
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
from si_assets.evaluation.data import EvalSettings, world_eval_data  # noqa: E402
from si_assets.evaluation.metrics import ObjectVocabulary, caption_scores  # noqa: E402
from si_assets.modeling.generation import continue_without_image, generate_greedy  # noqa: E402
from si_assets.optimization.dpo import LANGUAGE_MODEL_PROJECTIONS as LM_LORA  # noqa: E402
from si_assets.optimization.dpo import DPOResult, TrainingSettings  # noqa: E402
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
from si_assets.rounds.steps import sample as sample_responses  # noqa: E402
from si_assets.rounds.steps import score_checkpoint, train, verify  # noqa: E402
from si_assets.storage import ArtifactStore, Checkpoint  # noqa: E402
from si_assets.verifier.clip import ClipScorer, load_clip  # noqa: E402
from si_assets.world import WorldSpec, improve_ground_truth, improve_true_captions  # noqa: E402
from si_assets.world.vocabulary import world_vocabulary  # noqa: E402

METRICS = ["precision", "recall", "f1", "chair_s", "mentions_per_caption", "pope_f1"]
ROUND = "round-0001"  # the round key every variant runs as (a training seed varies the DPO seed only)


@dataclass(frozen=True)
class Variant:
    name: str
    sampling: SamplingSettings = SamplingSettings()
    verification: VerificationSettings = VerificationSettings()
    training: TrainingSettings = TrainingSettings()
    data: str = "pairs"  # "pairs" | "supervised" (seed_train labels; self-SFT is `training.optimization`)
    # "clip" (the loop) | diagnosis only, reads the labels: "oracle_pick" (the most precise of the same samples)
    # or "true_caption" (the image's clean caption); how far better chosen data alone would move the round
    chosen: str = "clip"
    greedy_candidate: bool = False  # the seed's greedy caption joins the N samples CLIP picks from
    consensus: tuple[int, ...] = ()  # per vote threshold, a caption of the mentions that many samples share
    prior_swapped: bool = False  # rejected = the chosen caption with a mention the image-free stream puts there
    note: str = ""


DEFAULT = TrainingSettings()
PLAIN = VerificationSettings(**PairRule.plain().model_dump())  # best sample vs worst negative, one pair per image
LITERAL_SAMPLING = SamplingSettings(n_samples=1, n_negatives=1)
# One SFT target per image: as many epochs as the loop has pairs per image give the same optimizer steps.
SFT_ONLY = TrainingSettings(objective="sft", epochs=DEFAULT.epochs * VerificationSettings().pairs_per_image)
VARIANTS = {
    v.name: v
    for v in [
        Variant("loop",
                note="the defaults: CLIP composes the chosen caption from the best sample's segments and the others'; "
                     "2 best candidates vs 2 CLIP-worst negatives, one yes/no probe per image; DPO + SFT term, LoRA on "
                     "every linear layer"),
        Variant("best_of_n", verification=PLAIN,
                training=DEFAULT.model_copy(update={"lora_targets": LM_LORA}),
                note="CLIP-best of the samples vs the CLIP-worst negative, language-model LoRA"),
        Variant("literal", sampling=LITERAL_SAMPLING, verification=PLAIN,
                training=DEFAULT.model_copy(update={"rpo_alpha": 0.0}),
                note="1 sample, CLIP swap/discard, plain DPO (the paper's recipe)"),
        Variant("literal_sft", sampling=LITERAL_SAMPLING, verification=PLAIN,
                note="1 sample, CLIP swap/discard, DPO + SFT term"),
        Variant("no_verification", verification=VerificationSettings(verification="none"),
                note="pairs as generated"),
        Variant("random_negatives", verification=VerificationSettings(negatives="random"),
                note="negative = another image's response"),
        Variant("self_sft", training=SFT_ONLY.model_copy(update={"optimization": "self_sft"}),
                note="label-free self-training on the seed's greedy captions, same trainer and steps"),
        Variant("supervised", data="supervised", training=SFT_ONLY,
                note="REFERENCE ONLY (reads labels): SFT on seed_train captions, same steps"),
        Variant("prior_swapped", prior_swapped=True,
                note="rejected = the chosen caption with the mention the image-free stream says at that place"),
        Variant("oracle_pick", verification=PLAIN, chosen="oracle_pick",
                note="DIAGNOSIS ONLY (reads labels): chosen = the most precise of the same samples"),
        Variant("true_caption", verification=PLAIN, chosen="true_caption",
                note="DIAGNOSIS ONLY (reads labels): chosen = the image's clean caption"),
    ]
}  # fmt: skip
LABEL_READING = {"supervised", "oracle_pick", "true_caption"}


def updated(settings, **changes):
    """A validated copy with some fields changed."""
    return type(settings)(**{**settings.model_dump(), **changes})


def derive(base: Variant, name: str, overrides: dict) -> Variant:
    """A variant of `base` from JSON overrides; nested keys for sampling, verification and training."""
    nested = {"sampling": base.sampling, "verification": base.verification, "training": base.training}
    fields = {k: updated(nested[k], **v) if k in nested else v for k, v in overrides.items()}
    return replace(base, name=name, note=json.dumps(overrides), **fields)


@dataclass
class Bench:
    world: dict[str, pl.DataFrame]
    spec: WorldSpec
    store: ArtifactStore
    models: object  # the `models` resource: loads checkpoints on the compute device
    seed: Checkpoint
    clip_dir: Path
    vocab: ObjectVocabulary
    device: torch.device = torch.device("cpu")
    greedy: dict[str, dict[str, str]] = field(default_factory=dict)  # checkpoint version -> image id -> caption

    def load(self, checkpoint: Checkpoint):
        return self.models.load(checkpoint.path)

    def evaluate(self, checkpoint: Checkpoint) -> dict[str, float]:
        data = world_eval_data(self.world["eval"])
        return score_checkpoint(EvalSettings(), self.models, self.store, checkpoint, data, print).metrics


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
    splits = {s: result.asset_value(f"world_{s}") for s in ("seed_train", "improve", "eval")}
    splits["improve"] = splits["improve"].head(images)
    store = resources["store"].get()  # the checkpoints as stored (the outputs' staging folders are gone)
    return Bench(
        world=splits,
        spec=WorldSpec(**world),
        store=store,
        models=resources["models"],
        seed=store.local_checkpoint(store.head("bootstrap_seed_model")),
        clip_dir=Path(store.local_checkpoint(store.head("bootstrap_clip")).path),
        vocab=ObjectVocabulary.from_kinds(world_vocabulary(splits["eval"])[0]),
    )


def responses_for(bench: Bench, settings: SamplingSettings, checkpoint: Checkpoint) -> pl.DataFrame:
    """The round's positives and negatives from `checkpoint`, decoded by the product's sampling step (chunks are
    cached in the store, so settings decoded before are read back)."""
    started = time.perf_counter()
    improve = bench.world["improve"]
    responses, _ = sample_responses(
        settings, bench.models, bench.store, checkpoint, improve, ROUND, bench.device, torch.float32, log=print
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
    bench: Bench, variant: Variant, scorer: ClipScorer, truth: dict, checkpoint: Checkpoint
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(pairs, their images, diagnostics) for one round of `variant` from `checkpoint`: the product's sampling and
    verification steps, plus the variant's bench-only candidates and chosen sides."""
    improve = bench.world["improve"]
    if variant.data == "supervised":
        train_split = bench.world["seed_train"].sample(improve.height, seed=0)
        prompts = ["Describe the image."] * train_split.height
        pairs = sft_pairs(train_split["id"], prompts, train_split["caption"]).with_columns(decision=pl.lit(KEPT))
        return pairs, train_split.with_columns(prompt=pl.Series(prompts)), {}
    if variant.training.optimization == "self_sft":
        return pl.DataFrame(), improve, {}  # the training step captions the images itself
    responses = responses_for(bench, variant.sampling, checkpoint)
    if variant.greedy_candidate:
        responses = with_greedy_candidate(bench, responses, checkpoint)
    if variant.consensus:
        responses = with_consensus_candidates(responses, variant.consensus, truth, bench.vocab)
    edit = prior_swap_edit(partial(continue_without_image, *bench.load(checkpoint))) if variant.prior_swapped else None
    clip_version = bench.clip_dir.name
    verified = verify(
        variant.verification, scorer, "cpu", bench.store, clip_version, responses, improve, ROUND, edit, print
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
    seeds: list[int],
    images: int,
    overrides: dict,
    world: dict,
    clip: dict,
    seed_model: dict,
    clip_dir: Path | None = None,
    rounds: int = 1,
    out: Path | None = None,
) -> pl.DataFrame:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    bench = build_bench(images, world, clip, seed_model)
    truth = improve_ground_truth(bench.spec)
    scorer = ClipScorer(*load_clip(str(clip_dir or bench.clip_dir)))
    if clip_dir:
        bench.clip_dir = clip_dir
    rows = [{"variant": "seed", "seed": -1, **bench.evaluate(bench.seed)}]
    print("seed:", {m: round(rows[0][m], 3) for m in METRICS}, flush=True)
    for variant in variants:
        variant = replace(
            variant,
            sampling=updated(variant.sampling, **overrides.get("sampling", {})),
            verification=updated(variant.verification, **overrides.get("verification", {})),
            training=updated(variant.training, **overrides.get("training", {})),
        )
        first_round = training_data(bench, variant, scorer, truth, bench.seed)
        if first_round[2]:
            print(f"{variant.name}: pairs {first_round[2]}", flush=True)
        for seed in seeds:
            checkpoint, (pairs, pool, _) = bench.seed, first_round
            for round_ in range(1, (rounds if variant.data == "pairs" else 1) + 1):
                if round_ > 1:  # the next round samples from, and trains, the model the last one made
                    pairs, pool, diagnostics = training_data(bench, variant, scorer, truth, checkpoint)
                    print(f"{variant.name} seed {seed} round {round_}: pairs {diagnostics}", flush=True)
                label = variant.name if round_ == 1 else f"{variant.name}@round{round_}"
                started = time.perf_counter()
                settings = updated(variant.training, seed=seed)
                trained = train(
                    settings, bench.models, bench.store, checkpoint, pairs, pool, ROUND, bench.device, torch.float32
                )
                checkpoint = bench.store.local_checkpoint(bench.store.put(trained.checkpoint, "_bench/trained", label))
                metrics = bench.evaluate(checkpoint)
                seconds = time.perf_counter() - started
                steps = trained.result.steps
                rows.append({"variant": label, "seed": seed, "steps": steps, "seconds": seconds, **metrics})
                if out:  # after every run, so a stopped benchmark keeps what it measured
                    pl.DataFrame(rows).write_csv(out)
                shown = " ".join(f"{m} {metrics[m]:.3f}" for m in METRICS)
                print(f"{label} seed {seed}: {shown} ({steps} steps, {seconds:.0f}s)", flush=True)
                if trained.settings.objective == "dpo":
                    print(f"{label} seed {seed} curve: {curve_note(trained.result)}", flush=True)
    return pl.DataFrame(rows)


def curve_note(result: DPOResult) -> str:
    """The preference accuracy and reward margin early, midway and at the end: does the DPO term saturate?"""
    curve = result.curve_table()
    if curve.height == 0:
        return "(no logged steps)"
    picks = sorted({0, curve.height // 4, curve.height // 2, curve.height - 1})
    rows = curve.select("step", "rewards/accuracies", "rewards/margins").rows()
    return " | ".join(f"step {rows[i][0]:.0f}: acc {rows[i][1]:.2f} margin {rows[i][2]:.2f}" for i in picks)


def summary(results: pl.DataFrame) -> pl.DataFrame:
    seed = results.filter(pl.col("variant") == "seed").row(0, named=True)
    return (
        results.filter(pl.col("variant") != "seed")
        .group_by("variant", maintain_order=True)
        .agg(
            pl.len().alias("seeds"),
            *[pl.col(m).mean().alias(m) for m in METRICS],
            (pl.col("precision").max() - pl.col("precision").min()).alias("precision_spread"),
            pl.col("precision").round(3).cast(pl.String).str.join(" / ").alias("precision_per_seed"),
        )
        .with_columns(
            delta_precision=pl.col("precision") - seed["precision"], delta_recall=pl.col("recall") - seed["recall"]
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[name for name in VARIANTS if name not in LABEL_READING - {"supervised"}],  # diagnoses on request
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
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
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
    parser.add_argument("--out", type=Path, help="write the per-seed results as CSV here")
    args = parser.parse_args()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    variants = [VARIANTS[v] for v in args.variants]
    for spec in args.derive:
        name, overrides = spec.split("=", 1)
        variants.append(derive(VARIANTS[args.base], name, json.loads(overrides)))
    results = run(
        variants,
        args.seeds,
        args.images,
        {"sampling": args.sample, "verification": args.verify, "training": args.train},
        args.world,
        args.clip,
        args.seed_model,
        args.clip_dir,
        args.rounds,
        args.out,
    )
    table = summary(results)
    with pl.Config(tbl_rows=50, tbl_cols=20, float_precision=3, tbl_width_chars=200):
        print(results.filter(pl.col("variant") == "seed").select("variant", *METRICS))
        print(table)
    print(f"spread of the per-seed precision, mean over variants: {float(table['precision_spread'].mean()):.3f}")


if __name__ == "__main__":
    main()
