"""Does one improvement round really reduce hallucination, and more than every baseline?

Reuses (or builds) the world and the bootstrap seed + CLIP through Dagster, decodes the round's responses
once per sampling setting, then trains every variant over several training seeds and evaluates each on
the held-out split. Baselines are configuration of the same code: no verification, random negatives,
label-free self-SFT, the literal recipe (1 sample, plain DPO); plus, as a reference only, supervised
training on `seed_train` labels with the same trainer and steps. Labels of `improve` are read only to
diagnose the pairs (precision of chosen / rejected), never by the loop.

    .venv/bin/python bench/round_ablation.py [--seeds 0 1 2] [--variants loop self_sft ...] [--out docs/...]
    .venv/bin/python bench/round_ablation.py --variants loop oracle_pick true_caption  # better chosen data?
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import dagster as dg  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from si_assets.assets.bootstrap import bootstrap_clip, bootstrap_seed_model  # noqa: E402
from si_assets.assets.organization import VerificationConfig  # noqa: E402
from si_assets.assets.world import world_splits  # noqa: E402
from si_assets.collection.sampling import HallucinationRatios, decode_plan, plan_requests  # noqa: E402
from si_assets.definitions import build_resources  # noqa: E402
from si_assets.evaluation.evaluate import evaluate_model  # noqa: E402
from si_assets.evaluation.metrics import ObjectVocabulary, caption_scores  # noqa: E402
from si_assets.modeling.generation import continue_without_image, generate_greedy  # noqa: E402
from si_assets.modeling.mixed_decoding import SamplerSettings  # noqa: E402
from si_assets.optimization.dpo import LANGUAGE_MODEL_PROJECTIONS as LM_LORA  # noqa: E402
from si_assets.optimization.dpo import DPOResult, DPOSettings, as_trained, train_dpo  # noqa: E402
from si_assets.optimization.self_training import self_sft_pairs, sft_pairs  # noqa: E402
from si_assets.organization.composition import extra_candidates  # noqa: E402
from si_assets.organization.probes import PROBE, YES  # noqa: E402
from si_assets.organization.segments import join_segments, segment_positions, segment_votes  # noqa: E402
from si_assets.organization.verification import (  # noqa: E402
    CAPTION,
    PairRule,
    clip_score_fn,
    decision_counts,
    organize_pairs,
    score_responses,
    training_pairs,
)
from si_assets.verifier.clip import ClipScorer, load_clip  # noqa: E402
from si_assets.world import (  # noqa: E402
    EVAL_PROMPT,
    WorldSpec,
    decode_png,
    improve_ground_truth,
    improve_true_captions,
)
from si_assets.world.vocabulary import world_vocabulary  # noqa: E402

METRICS = ["precision", "recall", "f1", "chair_s", "mentions_per_caption", "pope_f1"]


@dataclass(frozen=True)
class Variant:
    name: str
    n_samples: int = 8
    n_negatives: int = 4
    ratios: HallucinationRatios = HallucinationRatios()
    sampler: SamplerSettings = SamplerSettings()
    rule: PairRule = PairRule()  # the variants below say which
    training: DPOSettings = DPOSettings()
    data: str = "pairs"  # "pairs" | "self_sft" (seed's greedy captions) | "supervised" (seed_train labels)
    # "clip" (the loop) | diagnosis only, reads the labels: "oracle_pick" (the most precise of the same samples)
    # or "true_caption" (the image's clean caption); how far better chosen data alone would move the round
    chosen: str = "clip"
    greedy_candidate: bool = False  # the seed's greedy caption joins the N samples CLIP picks from
    consensus: tuple[int, ...] = ()  # per vote threshold, a caption of the mentions that many samples share
    note: str = ""


DEFAULT = DPOSettings()
LOOP_RULE = VerificationConfig().pair_rule(seed=0)  # the `verified_pairs` defaults
PLAIN_RULE = PairRule()  # CLIP-best sample vs CLIP-worst negative, one pair per image
EARLIER_TRAINING = DEFAULT.model_copy(update={"lora_targets": LM_LORA, "epochs": 2.0})  # the defaults until stop 17
# One SFT target per image: as many epochs as the loop has pairs per image give the same optimizer steps.
SFT_ONLY = DPOSettings(objective="sft", epochs=DEFAULT.epochs * LOOP_RULE.pairs_per_image)
VARIANTS = {
    v.name: v
    for v in [
        Variant("loop", rule=LOOP_RULE,
                note="the defaults: CLIP composes the chosen caption from the best sample's segments and the others'; "
                     "2 best candidates vs 2 CLIP-worst negatives; DPO + SFT term, LoRA on every linear layer"),
        Variant("best_of_n", rule=PLAIN_RULE, training=EARLIER_TRAINING,
                note="the earlier defaults: CLIP-best of the samples vs the CLIP-worst negative, language-model "
                     "LoRA, 2 epochs"),
        Variant("literal", n_samples=1, n_negatives=1, rule=PLAIN_RULE,
                training=DEFAULT.model_copy(update={"rpo_alpha": 0.0}),
                note="1 sample, CLIP swap/discard, plain DPO (the paper's recipe)"),
        Variant("literal_sft", n_samples=1, n_negatives=1, rule=PLAIN_RULE,
                note="1 sample, CLIP swap/discard, DPO + SFT term"),
        Variant("no_verification", rule=VerificationConfig(verification="none").pair_rule(seed=0),
                note="pairs as generated"),
        Variant("random_negatives", rule=replace(LOOP_RULE, negatives="random"),
                note="negative = another image's response"),
        Variant("self_sft", data="self_sft", training=SFT_ONLY,
                note="label-free self-training on the seed's greedy captions, same trainer and steps"),
        Variant("supervised", data="supervised", training=SFT_ONLY,
                note="REFERENCE ONLY (reads labels): SFT on seed_train captions, same steps"),
        Variant("oracle_pick", rule=PLAIN_RULE, chosen="oracle_pick",
                note="DIAGNOSIS ONLY (reads labels): chosen = the most precise of the same samples"),
        Variant("true_caption", rule=PLAIN_RULE, chosen="true_caption",
                note="DIAGNOSIS ONLY (reads labels): chosen = the image's clean caption"),
    ]
}  # fmt: skip


def updated(settings, **changes):
    """A copy with some fields changed, for the dataclass and the pydantic settings alike."""
    return settings.model_copy(update=changes) if isinstance(settings, BaseModel) else replace(settings, **changes)


def derive(base: Variant, name: str, overrides: dict) -> Variant:
    """A variant of `base` from JSON overrides; nested keys for ratios, sampler, rule and training."""
    nested = {"ratios": base.ratios, "sampler": base.sampler, "rule": base.rule, "training": base.training}
    fields = {k: updated(nested[k], **v) if k in nested else v for k, v in overrides.items()}
    return replace(base, name=name, note=json.dumps(overrides), **fields)


@dataclass
class Bench:
    world: dict[str, pl.DataFrame]
    spec: WorldSpec
    seed_dir: Path
    clip_dir: Path
    vocab: ObjectVocabulary
    eval_images: list
    improve_images: dict
    responses: dict[tuple, pl.DataFrame] = field(default_factory=dict)
    greedy: dict[Path | None, dict[str, str]] = field(default_factory=dict)  # checkpoint -> image id -> caption

    def load_seed(self, checkpoint: Path | None = None):
        checkpoint = checkpoint or self.seed_dir
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, use_safetensors=True).eval()
        return model, AutoProcessor.from_pretrained(checkpoint)

    def evaluate(self, model, processor) -> dict[str, float]:
        ev = self.world["eval"]
        return evaluate_model(
            model, processor, ev["id"].to_list(), self.eval_images, ev["objects"].to_list(), self.vocab, EVAL_PROMPT
        ).metrics


def build_bench(images: int, world: dict, clip: dict, seed_model: dict) -> Bench:
    """World and bootstrap models through Dagster (memoised: reused when `make demo` built them)."""
    spec = WorldSpec(**world)
    resources = build_resources()
    configs = {"world_splits": world, "bootstrap_clip": clip, "bootstrap_seed_model": seed_model}
    result = dg.materialize(
        [world_splits, bootstrap_seed_model, bootstrap_clip],
        resources=resources,
        instance=dg.DagsterInstance.get(),
        run_config={"ops": {op: {"config": config} for op, config in configs.items()}},
    )
    world = {s: result.asset_value(f"world_{s}") for s in ("seed_train", "improve", "eval")}
    world["improve"] = world["improve"].head(images)
    store = resources["store"].get()  # the checkpoints as stored (the outputs' staging folders are gone)
    seed_dir = Path(store.local_checkpoint(store.head("bootstrap_seed_model")).path)
    clip_dir = Path(store.local_checkpoint(store.head("bootstrap_clip")).path)
    return Bench(
        spec=spec,
        world=world,
        seed_dir=seed_dir,
        clip_dir=clip_dir,
        vocab=ObjectVocabulary.from_kinds(world_vocabulary(world["eval"])[0]),
        eval_images=[decode_png(b) for b in world["eval"]["image_png"]],
        improve_images={i: decode_png(b) for i, b in zip(world["improve"]["id"], world["improve"]["image_png"])},
    )


def responses_for(bench: Bench, variant: Variant, checkpoint: Path | None) -> pl.DataFrame:
    key = (variant.n_samples, variant.n_negatives, variant.ratios, variant.sampler, checkpoint)
    if key not in bench.responses:
        model, processor = bench.load_seed(checkpoint)
        plan = plan_requests(bench.world["improve"], variant.n_samples, variant.n_negatives, variant.ratios, 0)
        started = time.perf_counter()
        bench.responses[key] = decode_plan(model, processor, plan, bench.improve_images, variant.sampler, "seed")
        print(f"decoded {plan.height} responses {key} in {time.perf_counter() - started:.0f}s", flush=True)
    return bench.responses[key]


def with_greedy_candidate(bench: Bench, responses: pl.DataFrame, checkpoint: Path | None) -> pl.DataFrame:
    """The responses plus one more positive per image: the model's greedy caption (sample number N)."""
    if checkpoint not in bench.greedy:
        improve = bench.world["improve"]
        ids, prompts = improve["id"].to_list(), improve["prompt"].to_list()
        captions = generate_greedy(*bench.load_seed(checkpoint), [bench.improve_images[i] for i in ids], prompts)
        bench.greedy[checkpoint] = dict(zip(ids, captions))
    positives = responses.filter(pl.col("role") == "positive")
    greedy = extra_candidates(positives, bench.greedy[checkpoint]).with_columns(temperature=pl.lit(0.0))
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


def pairs_for(
    bench: Bench, variant: Variant, scorer: ClipScorer, truth: dict, checkpoint: Path | None = None
) -> tuple[pl.DataFrame, dict]:
    improve = bench.world["improve"]
    if variant.data == "self_sft":
        return self_sft_pairs(*bench.load_seed(), improve, bench.improve_images), {}
    if variant.data == "supervised":
        train = bench.world["seed_train"].sample(improve.height, seed=0)
        bench.improve_images.update({i: decode_png(b) for i, b in zip(train["id"], train["image_png"])})
        return sft_pairs(train["id"], ["Describe the image."] * train.height, train["caption"]), {}
    responses = responses_for(bench, variant, checkpoint)
    if variant.greedy_candidate:
        responses = with_greedy_candidate(bench, responses, checkpoint)
    if variant.consensus:
        responses = with_consensus_candidates(responses, variant.consensus, truth, bench.vocab)
    score = clip_score_fn(scorer, bench.improve_images, improve["id"].to_list(), "sentence_mean")
    continue_ = None
    if variant.rule.negatives == "prior_swapped":
        model, processor = bench.load_seed(checkpoint)
        continue_ = partial(continue_without_image, model, processor)
    pairs = organize_pairs(score_responses(responses, score), variant.rule, score, continue_)
    kept = labelled_chosen(training_pairs(pairs), responses, variant.chosen, bench, truth)

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
    return kept, diagnostics


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
    clip_model, preprocess, tokenizer = load_clip(str(clip_dir or bench.clip_dir))
    scorer = ClipScorer(clip_model, preprocess, tokenizer)
    rows = [{"variant": "seed", "seed": -1, **bench.evaluate(*bench.load_seed())}]
    print("seed:", {m: round(rows[0][m], 3) for m in METRICS}, flush=True)
    for variant in variants:
        name = variant.name
        variant = replace(variant, training=updated(variant.training, **overrides))
        pairs, diagnostics = pairs_for(bench, variant, scorer, truth)
        if diagnostics:
            print(f"{name}: pairs {diagnostics}", flush=True)
        for seed in seeds:
            with tempfile.TemporaryDirectory() as chain:
                checkpoint, round_pairs = None, pairs
                for round_ in range(1, (rounds if variant.data == "pairs" else 1) + 1):
                    if round_ > 1:  # the next round samples from, and trains, the model the last one made
                        round_pairs, diagnostics = pairs_for(bench, variant, scorer, truth, checkpoint)
                        print(f"{name} seed {seed} round {round_}: pairs {diagnostics}", flush=True)
                    label = name if round_ == 1 else f"{name}@round{round_}"
                    model, processor = bench.load_seed(checkpoint)
                    started = time.perf_counter()
                    with tempfile.TemporaryDirectory() as work:
                        settings = updated(variant.training, seed=seed)
                        trained_pairs = as_trained(round_pairs, settings)
                        trained, _, result = train_dpo(
                            model, processor, trained_pairs, bench.improve_images, settings, Path(work)
                        )
                    merged = trained.merge_and_unload().eval()
                    metrics = bench.evaluate(merged, processor)
                    seconds = time.perf_counter() - started
                    rows.append({"variant": label, "seed": seed, "steps": result.steps, "seconds": seconds, **metrics})
                    if out:  # after every run, so a stopped benchmark keeps what it measured
                        pl.DataFrame(rows).write_csv(out)
                    shown = " ".join(f"{m} {metrics[m]:.3f}" for m in METRICS)
                    print(f"{label} seed {seed}: {shown} ({result.steps} steps, {seconds:.0f}s)", flush=True)
                    if settings.objective == "dpo":
                        print(f"{label} seed {seed} curve: {curve_note(result)}", flush=True)
                    if round_ < rounds:
                        checkpoint = Path(chain) / f"round{round_}"
                        merged.save_pretrained(checkpoint)
                        processor.save_pretrained(checkpoint)
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
        default=[name for name, v in VARIANTS.items() if v.chosen == "clip"],  # the label-reading diagnoses on request
        choices=list(VARIANTS),
    )
    parser.add_argument(
        "--derive",
        nargs="+",
        default=[],
        metavar="NAME=JSON",
        help='extra variants of --base, e.g. neg35=\'{"ratios": {"mu_neg": 0.35}, "training": {"ld_alpha": 0.5}}\'',
    )
    parser.add_argument(
        "--base",
        default="loop",
        choices=list(VARIANTS),
        help="the variant --derive changes ('best_of_n': the earlier defaults, as docs/round_experiments.md §1-§9 ran)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=1500, help="unlabeled images used (the improve split's head)")
    parser.add_argument("--train", type=json.loads, default={}, help="DPOSettings overrides, e.g. '{\"epochs\": 3}'")
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
        args.train,
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
