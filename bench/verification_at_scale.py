"""(b) at a real model's size, FLOP-counted: CLIP verification of a round's candidates vs the seed model judging them
by yes/no questions, for a LLaVA-1.5-7B-shaped judge against an OpenAI ViT-L/14-shaped CLIP.

The work per image is counted on the embedded world: the bootstrap seed decodes the round's requests
(`n_samples` positives and `n_negatives` negatives per image), and the default organization runs on them with the
bootstrap CLIP, composition included, counting every text its text tower encodes. A judge that picks among the
same candidates asks "Is there a X in the image?" about the objects they mention, in two ways: once per response and
object (each question a full prompt with the image), or at its cheapest, once per distinct object of an image with
the image prompt's KV cache shared by all of that image's questions. Each question is answered by one token.

FLOPs per forward come from `torch.utils.flop_counter` over random-weight models built on the meta device (nothing
is allocated or downloaded): LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at 336 px, 576 image tokens; a Llama-2-7B text
model) and open_clip's ViT-L-14 (224 px images, 77-token texts).

    .venv/bin/python bench/verification_at_scale.py --store DIR/store [--images 64]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from si_assets.collection.sampling import SamplingSettings, decode_plan, plan_requests  # noqa: E402
from si_assets.organization.probes import mentioned_objects  # noqa: E402
from si_assets.organization.verification import (  # noqa: E402
    VerificationSettings,
    clip_score_fn,
    organize_pairs,
    score_responses,
)
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.verifier.clip import ClipScorer, load_clip  # noqa: E402
from si_assets.world import decode_png  # noqa: E402

IMAGE_TOKENS = 576  # LLaVA-1.5: a 336 px image in 14 px patches
QUESTION_TOKENS = 24  # chat template + "Is there a X in the image? Answer yes or no." in a Llama tokenizer


def flops(fn: Callable[[], object]) -> tuple[int, object]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = fn()
    return counter.get_total_flops(), out


def judge_costs() -> dict[str, int]:
    """FLOPs of a LLaVA-1.5-7B-shaped model: the vision tower and projector on one image, a full question prompt,
    the question alone over a cached image prompt, and one decoding step."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    text = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32064
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text)).eval()
    image = torch.zeros(1, 3, 336, 336, device="meta")
    vision_flops, _ = flops(lambda: model.model.get_image_features(pixel_values=image))

    def embeds(tokens: int) -> torch.Tensor:
        return torch.zeros(1, tokens, text.hidden_size, device="meta")

    prompt_flops, _ = flops(lambda: model(inputs_embeds=embeds(IMAGE_TOKENS + QUESTION_TOKENS), logits_to_keep=1))
    _, image_prompt = flops(lambda: model(inputs_embeds=embeds(IMAGE_TOKENS), use_cache=True, logits_to_keep=1))
    cache = image_prompt.past_key_values
    question_flops, after = flops(
        lambda: model(inputs_embeds=embeds(QUESTION_TOKENS), past_key_values=cache, use_cache=True, logits_to_keep=1)
    )
    token = torch.zeros(1, 1, dtype=torch.long, device="meta")
    step_flops, _ = flops(lambda: model(input_ids=token, past_key_values=after.past_key_values, use_cache=True))
    image_prompt_flops, _ = flops(lambda: model(inputs_embeds=embeds(IMAGE_TOKENS), logits_to_keep=1))
    return {
        "vision": vision_flops,
        "prompt": prompt_flops,
        "image_prompt": image_prompt_flops,
        "question_on_cache": question_flops,
        "step": step_flops,
    }


def clip_costs() -> dict[str, int]:
    model = open_clip.create_model("ViT-L-14", pretrained=None).to("meta")  # built on the CPU, then dropped
    image_flops, _ = flops(lambda: model.encode_image(torch.zeros(1, 3, 224, 224, device="meta")))
    text_flops, _ = flops(lambda: model.encode_text(torch.zeros(1, 77, dtype=torch.long, device="meta")))
    return {"image": image_flops, "text": text_flops}


def round_work(store: ArtifactStore, images: int) -> dict[str, int]:
    """Images, texts the CLIP encodes (composition included) and questions a judge would ask, on `images` images."""
    seed_dir = store.local_checkpoint(store.head("bootstrap_seed_model")).path
    model = AutoModelForImageTextToText.from_pretrained(seed_dir).eval()
    processor = AutoProcessor.from_pretrained(seed_dir)
    pool = store.read_table(store.head("world_improve")).head(images)
    image_by_id = {i: decode_png(b) for i, b in zip(pool["id"], pool["image_png"])}
    sampling = SamplingSettings()
    plan = plan_requests(pool, sampling.n_samples, sampling.n_negatives, sampling, 0)
    responses = decode_plan(model, processor, plan, image_by_id, sampling, "seed", sampling.batch_size)

    clip, preprocess, tokenizer = load_clip(str(store.local_checkpoint(store.head("bootstrap_clip")).path))
    scorer = ClipScorer(clip, preprocess, tokenizer)
    encoded = 0
    text_embeddings = scorer.text_embeddings

    def counted(texts):
        nonlocal encoded
        encoded += len(texts)
        return text_embeddings(texts)

    scorer.text_embeddings = counted  # type: ignore[method-assign]
    settings = VerificationSettings()
    score = clip_score_fn(scorer, image_by_id, list(image_by_id), settings.score_mode)
    organize_pairs(score_responses(responses, score), settings.rule(), score)

    mentions = responses.with_columns(objects=pl.col("response").map_elements(mentioned_objects, pl.List(pl.String)))
    per_response = int(mentions["objects"].list.len().sum())
    distinct = mentions.explode("objects").drop_nulls("objects").unique(["image_id", "objects"]).height
    return {
        "images": images,
        "responses": responses.height,
        "clip_texts": encoded,
        "questions": per_response,
        "distinct_questions": distinct,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    store = ArtifactStore(str(args.store))
    if store.head("bootstrap_seed_model") is None:
        raise SystemExit(f"no bootstrap artifacts in {args.store}: run `make demo` first")

    work = round_work(store, args.images)
    judge, clip = judge_costs(), clip_costs()
    n = work["images"]
    clip_flops = n * clip["image"] + work["clip_texts"] * clip["text"]
    per_question = judge["vision"] + judge["prompt"] + judge["step"]
    naive_judge = work["questions"] * per_question
    shared_judge = n * (judge["vision"] + judge["image_prompt"]) + work["distinct_questions"] * (
        judge["question_on_cache"] + judge["step"]
    )
    print(
        f"work on {n} images, {work['responses']} responses: CLIP encodes {n} images and {work['clip_texts']} texts"
        f" ({work['clip_texts'] / n:.1f} per image, composition included); a judge asks {work['questions']} questions"
        f" ({work['distinct_questions']} distinct image-object pairs)"
    )
    tera = 1e12
    print(
        f"FLOPs per forward: ViT-L/14 image {clip['image'] / 1e9:.0f} G, text {clip['text'] / 1e9:.1f} G;"
        f" 7B judge: vision tower {judge['vision'] / 1e9:.0f} G, question prompt ({IMAGE_TOKENS}+{QUESTION_TOKENS}"
        f" tokens) {judge['prompt'] / tera:.2f} T, question on a cached image prompt"
        f" {judge['question_on_cache'] / tera:.2f} T, one answer token {judge['step'] / 1e9:.1f} G"
    )
    print(
        f"(b) at scale: CLIP {clip_flops / tera:.1f} TFLOP vs a 7B judge {naive_judge / tera:.0f} TFLOP asking each"
        f" response's objects -> {naive_judge / clip_flops:.0f}x cheaper; vs the judge at its cheapest (distinct"
        f" objects, image prompt cached) {shared_judge / tera:.0f} TFLOP -> {shared_judge / clip_flops:.0f}x cheaper"
        f" (goal >= 20x)"
    )


if __name__ == "__main__":
    main()
