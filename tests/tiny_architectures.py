"""Tiny random-weight checkpoints of the model families users bring (LLaVA, Qwen2-VL, Idefics3/SmolVLM), built
from the architectures' own config and processor classes and saved with `save_pretrained`, so the pipeline loads
them through the Auto* classes exactly as it loads a downloaded model. No hub, well under a second each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from si_assets.bootstrap.seed_model import tokenizer_corpus
from si_assets.bootstrap.tiny_vlm import CHAT_TEMPLATE, TinyVLMSpec, build_model, build_processor, build_tokenizer
from si_assets.world import WorldSpec, generate_split

IMAGE_SIZE, PATCH = 48, 8
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def _content(image_markup: str) -> str:
    """The template fragment that writes a message's content: a string, or typed parts with image markup."""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image_markup}{{% elif part['type'] == 'text' %}}{{{{ part['text'] }}}}"
        "{% endif %}{% endfor %}{% endif %}"
    )


# The families' own conversation formats (shortened: no system turn).
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + _content("<|vision_start|><|image_pad|><|vision_end|>")
    + "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}: "
    + _content("<image>")
    + "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _tokenizer(special: dict[str, str], template: str) -> PreTrainedTokenizerFast:
    spec = WorldSpec(seed=7, splits={"seed_train": 40, "clip_train": 2, "improve": 2, "dev": 2, "test": 2})
    captions = generate_split(spec, "seed_train")["caption"].to_list()
    return build_tokenizer(tokenizer_corpus(captions, spec.kinds), 300, special, template)


def _text_config(tokenizer: PreTrainedTokenizerFast, kv_heads: int, **extra) -> dict:
    """The language model's config: tiny sizes, the tokenizer's vocabulary and special ids."""
    return {
        **TEXT,
        "vocab_size": len(tokenizer),
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **extra,
    }


def _generation_ids(model, tokenizer: PreTrainedTokenizerFast) -> None:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))


def _spread(model: torch.nn.Module) -> None:
    """The default init is so small that every input decodes to the same text; the pipeline needs variety."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)


def llava(folder: Path) -> None:
    """The bootstrap family: LLaVA (CLIP vision tower, Llama text model)."""
    tokenizer = _tokenizer({"image_token": "<image>"}, CHAT_TEMPLATE)
    model = build_model(tokenizer, TinyVLMSpec())
    _spread(model)
    model.save_pretrained(folder)
    build_processor(tokenizer, TinyVLMSpec()).save_pretrained(folder)


def qwen2_vl(folder: Path) -> None:
    """Qwen2-VL: native-resolution patches merged 2x2, multimodal rotary positions (M-RoPE)."""
    special = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
        "im_start_token": "<|im_start|>",
        "im_end_token": "<|im_end|>",
    }
    tokenizer = _tokenizer(special, QWEN2_VL_TEMPLATE)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in special.items()}
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    config = Qwen2VLConfig(
        # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width).
        text_config=_text_config(
            tokenizer, 2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        ),
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": TEXT["hidden_size"],
            "num_heads": 2,
            "patch_size": PATCH,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
    )
    assert sum(config.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    model = Qwen2VLForConditionalGeneration(config)
    _spread(model)
    _generation_ids(model, tokenizer)
    model.save_pretrained(folder)
    pixels = {"min_pixels": (PATCH * 2) ** 2, "max_pixels": IMAGE_SIZE**2}
    Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2, **pixels),
        video_processor=Qwen2VLVideoProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2, **pixels),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_TEMPLATE,
    ).save_pretrained(folder)


def idefics3(folder: Path) -> None:
    """Idefics3 / SmolVLM: SigLIP-style vision tower, pixel-shuffle connector, Llama text model."""
    special = {
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
        "im_start_token": "<|im_start|>",
    }
    tokenizer = _tokenizer(special, IDEFICS3_TEMPLATE)
    scale = 2
    image_seq_len = (IMAGE_SIZE // PATCH) ** 2 // scale**2  # patches, then pixel shuffle by `scale`
    config = Idefics3Config(
        text_config=_text_config(tokenizer, 4, model_type="llama"),
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    model = Idefics3ForConditionalGeneration(config)
    _spread(model)
    _generation_ids(model, tokenizer)
    model.save_pretrained(folder)
    edge = {"longest_edge": IMAGE_SIZE}
    Idefics3Processor(
        image_processor=Idefics3ImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_TEMPLATE,
    ).save_pretrained(folder)


ARCHITECTURES: dict[str, Callable[[Path], None]] = {"llava": llava, "qwen2_vl": qwen2_vl, "idefics3": idefics3}


def build_checkpoint(architecture: str, folder: Path) -> Path:
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    ARCHITECTURES[architecture](folder)
    return folder


def assert_merged_lora(trained: torch.nn.Module, base: torch.nn.Module) -> None:
    """A merged LoRA on every linear layer (the default) changed linear weights only, the language model's among
    them; embeddings, norms, biases and the output head stay as they were."""
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert any(("language_model" in n or "text_model" in n) for n in changed), changed
    assert all(n.endswith(".weight") and "embed" not in n and "norm" not in n and "lm_head" not in n for n in changed)
