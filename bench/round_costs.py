"""What the round's steps cost, as ratios against a baseline measured in the same run (medians of repeats).

(a) one controlled-hallucination pair (positive + negative, each decoded from p_mix with image and
    image-free streams) vs two plain `model.generate` samples, for both decoders of `decode_mixed`
    (`streams`: separate KV caches, one prefill per image and per image-free prompt; `generate`: both
    streams in one padded batch) and for a naive mixed decoder that runs the two streams as two forwards
    per token with no shared prefill; and, for reference, two plain samples that share one prefill too
    (the streams decoder at h = 0), which isolates what the image-free stream costs;
(b) CLIP verification of a pair vs the seed model judging the same pair by answering "Is there a X in
    the image?" for every object each response mentions;
(c) a 2-epoch DPO run with reference log-probs from the cache vs recomputed by TRL at every step.

    .venv/bin/python bench/round_costs.py [--images 128] [--pairs 256] [--repeats 3] [--images-per-batch 32]

Uses the bootstrap seed and CLIP from the artifact store (run `make demo` first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from si_assets.collection.sampling import HallucinationRatios, draw_ratios, stable_seed  # noqa: E402
from si_assets.evaluation.metrics import POPE_PROMPT, ObjectVocabulary  # noqa: E402
from si_assets.modeling.chat import user_prompt  # noqa: E402
from si_assets.modeling.generation import generate_greedy  # noqa: E402
from si_assets.modeling.mixed_decoding import MixedRequest, MixtureSampler, SamplerSettings, decode_mixed  # noqa: E402
from si_assets.optimization.dpo import DPOSettings, compute_reference, train_dpo  # noqa: E402
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.verifier.clip import ClipScorer, load_clip  # noqa: E402
from si_assets.world import decode_png  # noqa: E402

SETTINGS = SamplerSettings()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous: count it in the call that queued it
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def pair_requests(images: list, prompt: str) -> list[MixedRequest]:
    requests = []
    for k, image in enumerate(images):
        seed = stable_seed("bench", k)
        h_pos, h_neg = draw_ratios(np.random.default_rng(seed), HallucinationRatios())
        requests += [MixedRequest(image, prompt, h_pos, seed), MixedRequest(image, prompt, h_neg, seed)]
    return requests


@torch.no_grad()
def plain_samples(model, processor, images: list, prompt: str, batch_size: int = 64) -> None:
    """Two ordinary sampled captions per image: the cost a pair is compared against."""
    text = user_prompt(processor, prompt)
    for start in range(0, len(images), batch_size // 2):
        batch = images[start : start + batch_size // 2] * 2
        enc = processor(images=batch, text=[text] * len(batch), return_tensors="pt", padding=True).to(model.device)
        model.generate(
            **enc,
            do_sample=True,
            temperature=SETTINGS.temperature,
            max_new_tokens=SETTINGS.max_new_tokens,
            pad_token_id=processor.tokenizer.pad_token_id,
        )


@torch.no_grad()
def naive_mixed(model, processor, requests: list[MixedRequest], batch_size: int = 64) -> None:
    """The two streams as two separate forwards per token, each with its own KV cache."""
    eos = processor.tokenizer.eos_token_id
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        streams = []
        for with_image in (True, False):
            texts = [user_prompt(processor, r.prompt, with_image=with_image) for r in batch]
            images = [r.image for r in batch] if with_image else None
            enc = processor(images=images, text=texts, return_tensors="pt", padding=True).to(model.device)
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            out = model(**enc, position_ids=positions, use_cache=True)
            streams.append({"mask": enc["attention_mask"], "pos": positions[:, -1:], "out": out})
        sampler = MixtureSampler([r.h for r in batch], [r.seed for r in batch], SETTINGS)
        done = torch.zeros(len(batch), dtype=torch.bool, device=model.device)
        for _ in range(SETTINGS.max_new_tokens):
            scores = torch.cat([s["out"].logits[:, -1] for s in streams])
            token = sampler(None, scores)[: len(batch)].argmax(-1)
            done |= token == eos
            if done.all():
                break
            for s in streams:
                s["mask"] = torch.cat([s["mask"], s["mask"].new_ones(len(batch), 1)], dim=1)
                s["pos"] = s["pos"] + 1
                s["out"] = model(
                    input_ids=token[:, None],
                    attention_mask=s["mask"],
                    position_ids=s["pos"],
                    past_key_values=s["out"].past_key_values,
                    use_cache=True,
                )


def bench_decoding(model, processor, images: list, repeats: int, images_per_batch: int = 32) -> dict[str, float]:
    """All decode the same number of images per batch: 2 rows each for plain sampling and the naive decoder's two
    passes; a pair's positive and negative are one request each."""
    prompt = "Describe the image."
    requests = pair_requests(images, prompt)
    per_batch = 2 * images_per_batch
    plain_shared = [MixedRequest(r.image, r.prompt, 0.0, r.seed + k % 2) for k, r in enumerate(requests)]

    def mixed(decoder: str, batch: list[MixedRequest] = requests) -> float:
        return median_seconds(
            lambda: decode_mixed(model, processor, batch, SETTINGS, per_batch, decoder=decoder), repeats
        )

    return {
        "plain_two_samples_s": median_seconds(
            lambda: plain_samples(model, processor, images, prompt, per_batch), repeats
        ),
        "mixed_pair_s": mixed("streams"),
        "mixed_pair_generate_s": mixed("generate"),
        "naive_two_pass_s": median_seconds(lambda: naive_mixed(model, processor, requests, per_batch), repeats),
        "plain_shared_prefill_s": mixed("streams", plain_shared),
    }


def print_decoding(timings: dict[str, float]) -> None:
    plain = timings["plain_two_samples_s"]

    def ratio(key: str) -> str:
        return f"{timings[key]:.2f}s -> {timings[key] / plain:.2f}x"

    print(
        f"(a) pair decoding vs two plain samples {plain:.2f}s: streams decoder {ratio('mixed_pair_s')} (goal <= 1.3x);"
        f" generate decoder {ratio('mixed_pair_generate_s')}; naive two-pass decoder {ratio('naive_two_pass_s')};"
        f" two plain samples sharing one prefill {ratio('plain_shared_prefill_s')}"
        f" (the pair costs {timings['mixed_pair_s'] / timings['plain_shared_prefill_s']:.2f}x those)"
    )


def bench_verification(model, processor, scorer: ClipScorer, images: list, repeats: int) -> dict[str, float]:
    """Both judges see the same pairs: the seed's own positive/negative captions."""
    requests = pair_requests(images, "Describe the image.")
    texts = decode_mixed(model, processor, requests, SETTINGS, batch_size=128)
    pair_images = [r.image for r in requests]
    vocab = ObjectVocabulary.from_kinds(["circle", "square", "triangle", "star", "cross", "ring", "heart", "moon"])

    def clip_judge() -> None:
        embeddings = scorer.image_embeddings(images)
        scorer.score(embeddings.repeat_interleave(2, dim=0), texts)

    questions = [(im, POPE_PROMPT.format(object=o)) for im, t in zip(pair_images, texts) for o in vocab.mentions(t)]

    def self_judge() -> None:
        generate_greedy(model, processor, [q[0] for q in questions], [q[1] for q in questions], max_new_tokens=4)

    return {
        "clip_s": median_seconds(clip_judge, repeats),
        "self_judge_s": median_seconds(self_judge, repeats),
        "questions": len(questions),
    }


def bench_reference_cache(seed_dir: Path, pairs: pl.DataFrame, image_by_id: dict, repeats: int) -> dict[str, float]:
    settings = DPOSettings(epochs=2, logging_steps=1000)

    def fresh():
        return AutoModelForImageTextToText.from_pretrained(seed_dir), AutoProcessor.from_pretrained(seed_dir)

    def train(reference, cache: bool) -> float:
        model, processor = fresh()
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            train_dpo(model, processor, pairs, image_by_id, settings, Path(work), reference, cache_reference=cache)
            return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as work:
        model, processor = fresh()
        started = time.perf_counter()
        reference = compute_reference(model, processor, pairs, image_by_id, settings, Path(work))
        reference_s = time.perf_counter() - started
    per_step = statistics.median(train(None, cache=False) for _ in range(repeats))
    cached = statistics.median(train(reference, cache=True) for _ in range(repeats))
    return {"recomputed_s": per_step, "cached_s": cached, "cache_fill_s": reference_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=os.environ.get("SI_STORE", ".si_store"))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images-per-batch", type=int, default=32, help="(a): the same for all three decoders")
    args = parser.parse_args()
    torch.manual_seed(0)

    store = ArtifactStore(args.store)
    heads = {name: store.head(name) for name in ("bootstrap_seed_model", "bootstrap_clip", "world_improve")}
    if any(h is None for h in heads.values()):
        raise SystemExit(f"no bootstrap artifacts in {args.store}: run `make demo` first")
    seed_dir = store.local_checkpoint(heads["bootstrap_seed_model"]).path
    model = AutoModelForImageTextToText.from_pretrained(seed_dir).eval()
    processor = AutoProcessor.from_pretrained(seed_dir)
    improve = store.read_table(heads["world_improve"])
    images = [decode_png(b) for b in improve["image_png"].head(args.images)]

    a = bench_decoding(model, processor, images, args.repeats, args.images_per_batch)
    clip_model, preprocess, tokenizer = load_clip(str(store.local_checkpoint(heads["bootstrap_clip"]).path))
    b = bench_verification(model, processor, ClipScorer(clip_model, preprocess, tokenizer), images, args.repeats)

    subset = improve.head(args.pairs)
    image_by_id = {i: decode_png(p) for i, p in zip(subset["id"], subset["image_png"])}
    captions = decode_mixed(
        model, processor, pair_requests(list(image_by_id.values()), "Describe the image."), SETTINGS, batch_size=128
    )
    pairs = pl.DataFrame(
        {
            "pair_id": subset["id"],
            "image_id": subset["id"],
            "prompt": "Describe the image.",
            "chosen": captions[0::2],
            "rejected": captions[1::2],
        }
    )
    c = bench_reference_cache(Path(seed_dir), pairs, image_by_id, args.repeats)

    print(
        f"threads: {torch.get_num_threads()}, images: {args.images} ({args.images_per_batch} per batch),"
        f" pairs: {args.pairs}, repeats: {args.repeats}"
    )
    print_decoding(a)
    print(
        f"(b) verification of {args.images} pairs: CLIP {b['clip_s']:.3f}s vs self-judging with {b['questions']} yes/no"
        f" questions {b['self_judge_s']:.2f}s -> CLIP {b['self_judge_s'] / b['clip_s']:.1f}x cheaper (goal >= 20x)"
    )
    print(
        f"(c) 2-epoch DPO on {args.pairs} pairs: reference recomputed every step {c['recomputed_s']:.1f}s vs cached"
        f" {c['cached_s']:.1f}s -> {c['recomputed_s'] / c['cached_s']:.2f}x faster (goal >= 1.3x); filling the cache"
        f" once costs {c['cache_fill_s']:.1f}s"
        f" (first run, cache filled: {c['recomputed_s'] / (c['cached_s'] + c['cache_fill_s']):.2f}x)"
    )


if __name__ == "__main__":
    main()
