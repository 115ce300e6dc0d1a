"""Tiny random-weight checkpoints of the model families users bring (LLaVA, Qwen2-VL, Idefics3, SmolVLM, Gemma3),
and of the two that pre-flight refuses (PaliGemma, Mllama), built from the architectures' own config and processor
classes and saved with `save_pretrained`, so the pipeline loads them through the Auto* classes exactly as it loads a
downloaded model. Tokenizers are trained on the embedded world's captions with each family's special tokens; no hub,
well under a second each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessor,
    MllamaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    SiglipImageProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from si_assets.bootstrap.seed_model import tokenizer_corpus
from si_assets.bootstrap.tiny_vlm import CHAT_TEMPLATE as LLAVA_TEMPLATE
from si_assets.bootstrap.tiny_vlm import TinyVLMSpec, build_model, build_processor, build_tokenizer
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
# SmolVLM writes "User:" before an image part and "User: " before text.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    + _content("<image>")
    + "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{% if message['role'] == 'assistant' %}model{% else %}{{ message['role'] }}{% endif %}\n"
    + _content("<start_of_image>")
    + "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
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


def _spread(model: torch.nn.Module, std: float = 0.2) -> None:
    """The default init is so small that every input decodes to the same text; the pipeline needs variety."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)


def _save(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, processor, folder: Path, std: float = 0.2
) -> None:
    _spread(model, std)
    _generation_ids(model, tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def llava(folder: Path) -> None:
    """The bootstrap family: LLaVA (CLIP vision tower, Llama text model)."""
    tokenizer = _tokenizer({"image_token": "<image>"}, LLAVA_TEMPLATE)
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
    pixels = {"min_pixels": (PATCH * 2) ** 2, "max_pixels": IMAGE_SIZE**2}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2, **pixels),
        video_processor=Qwen2VLVideoProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2, **pixels),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_TEMPLATE,
    )
    _save(Qwen2VLForConditionalGeneration(config), tokenizer, processor, folder)


IDEFICS3_SPECIAL = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
    "im_start_token": "<|im_start|>",
}
PIXEL_SHUFFLE = 2
# Idefics3's and SmolVLM's image tokens: the patches, merged by the pixel shuffle.
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH) ** 2 // PIXEL_SHUFFLE**2
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _pixel_shuffle_family(template: str) -> tuple[PreTrainedTokenizerFast, dict]:
    """Idefics3 and SmolVLM share their tokens and their config's shape (SigLIP-style tower, pixel-shuffle
    connector, Llama text model)."""
    tokenizer = _tokenizer(IDEFICS3_SPECIAL, template)
    config = {
        "text_config": _text_config(tokenizer, 4, model_type="llama"),
        "vision_config": {**VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        "scale_factor": PIXEL_SHUFFLE,
    }
    return tokenizer, config


def idefics3(folder: Path) -> None:
    """Idefics3: SigLIP-style vision tower, pixel-shuffle connector, Llama text model."""
    tokenizer, config = _pixel_shuffle_family(IDEFICS3_TEMPLATE)
    edge = {"longest_edge": IMAGE_SIZE}
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=IDEFICS3_TEMPLATE,
    )
    _save(Idefics3ForConditionalGeneration(Idefics3Config(**config)), tokenizer, processor, folder)


def smolvlm(folder: Path) -> None:
    """SmolVLM: Idefics3's architecture with its own processor, which reads images per prompt (and videos)."""
    tokenizer, config = _pixel_shuffle_family(SMOLVLM_TEMPLATE)
    edge = {"longest_edge": IMAGE_SIZE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        video_processor=SmolVLMVideoProcessor(size=edge, max_image_size=edge),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_TEMPLATE,
    )
    _save(SmolVLMForConditionalGeneration(SmolVLMConfig(**config)), tokenizer, processor, folder)


def gemma3(folder: Path) -> None:
    """Gemma3: SigLIP vision tower average-pooled to a fixed number of soft tokens, Gemma3 text model (sliding
    and global attention layers); the prompt's image marker expands to begin/soft tokens/end of image."""
    special = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = _tokenizer({**special, "sot_token": "<start_of_turn>", "eot_token": "<end_of_turn>"}, GEMMA3_TEMPLATE)
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = _text_config(
        tokenizer,
        2,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,  # shorter than a prompt, so the sliding layers really slide
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in special.items()}
    tokens_per_image = 9  # the 6 x 6 patches average-pooled to 3 x 3
    config = Gemma3Config(
        text_config=text,
        vision_config={**VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH, "model_type": "siglip_vision_model"},
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=GEMMA3_TEMPLATE,
    )
    # Gemma3 scales its embeddings by sqrt(hidden size) and its norms by (1 + weight): at the others' spread every
    # prompt decodes to special tokens only, at a tenth of it the texts vary.
    _save(Gemma3ForConditionalGeneration(config), tokenizer, processor, folder, std=0.02)


def paligemma(folder: Path) -> None:
    """PaliGemma: SigLIP tower, linear projector, Gemma text model with prefix-LM attention over the prompt."""
    tokenizer = _tokenizer({"image_token": "<image>"}, LLAVA_TEMPLATE)
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAVA_TEMPLATE)
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    config = PaliGemmaConfig(
        text_config={**_text_config(tokenizer, 2, head_dim=head_dim), "vocab_size": len(processor.tokenizer)},
        vision_config={**VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH, "model_type": "siglip_vision_model"},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=TEXT["hidden_size"],
        hidden_size=TEXT["hidden_size"],
    )
    _save(PaliGemmaForConditionalGeneration(config), tokenizer, processor, folder, std=0.02)  # Gemma's scale, as above


def mllama(folder: Path) -> None:
    """Mllama (Llama 3.2 Vision): the text model reads the image through gated cross-attention layers."""
    template = LLAVA_TEMPLATE.replace("<image>", "<|image|>")
    tokenizer = _tokenizer({"image_token": "<|image|>", "python_token": "<|python_tag|>"}, template)
    config = MllamaConfig(
        text_config={**_text_config(tokenizer, 2), "cross_attention_layers": [1], "num_hidden_layers": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "max_num_tiles": 1,
            "vision_output_dim": 64,
            "intermediate_layers_indices": [0],
            "supported_aspect_ratios": [[1, 1]],
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, max_image_tiles=1),
        tokenizer=tokenizer,
        chat_template=template,
    )
    _save(MllamaForConditionalGeneration(config), tokenizer, processor, folder)


# Families pre-flight refuses: their image-free row cannot share a batch with image rows.
REFUSED: dict[str, Callable[[Path], None]] = {"paligemma": paligemma, "mllama": mllama}

ARCHITECTURES: dict[str, Callable[[Path], None]] = {
    "llava": llava,
    "qwen2_vl": qwen2_vl,
    "idefics3": idefics3,
    "smolvlm": smolvlm,
    "gemma3": gemma3,
}


def build_checkpoint(architecture: str, folder: Path) -> Path:
    """A supported family (`ARCHITECTURES`) or one pre-flight refuses (`REFUSED`), seeded."""
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    {**ARCHITECTURES, **REFUSED}[architecture](folder)
    return folder


def assert_merged_lora(trained: torch.nn.Module, base: torch.nn.Module) -> None:
    """A merged LoRA on every linear layer (the default) changed linear weights only, the language model's among
    them; embeddings, norms, biases and the output head stay as they were."""
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert any(("language_model" in n or "text_model" in n) for n in changed), changed
    assert all(n.endswith(".weight") and "embed" not in n and "norm" not in n and "lm_head" not in n for n in changed)
