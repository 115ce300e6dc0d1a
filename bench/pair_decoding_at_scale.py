"""(a) at a realistic model size, on a GPU: one controlled-hallucination pair vs two plain samples.

`round_costs.py` measures (a) on the tiny bootstrap seed, where 2 CPU cores are compute-bound and every
row costs its FLOPs. A real MLLM on a GPU decodes bound by reading its weights and KV cache, and its image
prompt dwarfs the image-free one, whose padding the streams decoder skips. This builds a random-weight
LLaVA-1.5-style model on the device (no download): a CLIP ViT-L/14 vision tower at 336 px (576 image
tokens) and a Llama text model, 1.2 B parameters with grouped-query attention by default. Random
weights cost what trained ones do per token, and responses run to `max_new_tokens` in every decoder
alike, so the ratios are the decoders', not the model's. All decode the same images, the same number per batch.

    .venv/bin/python bench/pair_decoding_at_scale.py [--device cuda] [--images 256] [--images-per-batch 32]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from round_costs import bench_decoding, print_decoding  # noqa: E402
from transformers import LlavaForConditionalGeneration  # noqa: E402

from si_assets.bootstrap.seed_model import tokenizer_corpus  # noqa: E402
from si_assets.bootstrap.tiny_vlm import TinyVLMSpec, build_model, build_processor, build_tokenizer  # noqa: E402
from si_assets.world import WorldSpec, decode_png, generate_split  # noqa: E402


def build_random_llava(args: argparse.Namespace, captions: list[str], kinds: list[str]):
    spec = TinyVLMSpec(
        image_size=args.image_size,
        patch_size=args.patch_size,
        vision_width=args.vision_width,
        vision_layers=args.vision_layers,
        vision_heads=args.vision_heads,
        text_width=args.text_width,
        text_layers=args.text_layers,
        text_heads=args.text_heads,
        max_positions=2048,
    )
    tokenizer = build_tokenizer(tokenizer_corpus(captions, kinds), spec.vocab_size)
    with torch.device("meta"):  # the tiny seed's config, then the knobs TinyVLMSpec does not have
        template = build_model(tokenizer, spec)
    config = template.config
    config.text_config.num_key_value_heads = args.kv_heads
    config.text_config.intermediate_size = args.text_intermediate
    config.vision_config.intermediate_size = 4 * args.vision_width
    torch.set_default_dtype(getattr(torch, args.dtype))
    with torch.device(args.device):
        model = LlavaForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config = template.generation_config
    return model, build_processor(tokenizer, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--images-per-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--vision-width", type=int, default=1024)
    parser.add_argument("--vision-layers", type=int, default=24)
    parser.add_argument("--vision-heads", type=int, default=16)
    parser.add_argument("--text-width", type=int, default=2048)
    parser.add_argument("--text-intermediate", type=int, default=5632)
    parser.add_argument("--text-layers", type=int, default=22)
    parser.add_argument("--text-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4, help="grouped-query attention; = --text-heads for MHA")
    args = parser.parse_args()
    torch.manual_seed(0)

    world = WorldSpec(splits={"seed_train": args.images, "clip_train": 0, "improve": 0, "dev": 0, "test": 0})
    captioned = generate_split(world, "seed_train")  # captions only to train the tokenizer on
    model, processor = build_random_llava(args, captioned["caption"].to_list(), world.kinds)
    parameters = sum(p.numel() for p in model.parameters())
    images = [decode_png(b) for b in captioned["image_png"]]
    timings = bench_decoding(model, processor, images, args.repeats, args.images_per_batch)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(
        f"{device}, {args.dtype}, random-weight LLaVA {parameters / 1e9:.2f} B parameters"
        f" ({args.kv_heads} KV heads of {args.text_heads}), {args.images} images, {args.images_per_batch} per batch,"
        f" {args.repeats} repeats"
    )
    print_decoding(timings)


if __name__ == "__main__":
    main()
