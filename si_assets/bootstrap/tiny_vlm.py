"""The bootstrap seed model: a real LLaVA architecture at toy scale, with a tokenizer and processor
built in-process (no hub). Everything downstream loads it back through the Auto* classes, exactly as
it would load LLaVA-1.5 from a hub id."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from si_assets.settings import Settings

IMAGE_TOKEN = "<image>"
BASE_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# LLaVA-1.5's conversation format. Content may be a string or a list of typed parts; an image part
# becomes the image placeholder, which the processor expands to one token per image patch.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


class TinyVLMSpec(Settings):
    """Sizes of the bootstrap LLaVA. Defaults: about 1.3M parameters, 36 image tokens (0.7M, 96 wide with 3 + 2
    layers, bootstraps in half the time but leaves one round too little capacity: docs/results.md, "Seed capacity")."""

    image_size: int = Field(48, ge=1)
    patch_size: int = Field(8, ge=1)
    vision_width: int = Field(128, ge=1)
    vision_layers: int = Field(4, ge=1)
    vision_heads: int = Field(4, ge=1)
    text_width: int = Field(128, ge=1)
    text_layers: int = Field(3, ge=1)
    text_heads: int = Field(4, ge=1)
    vocab_size: int = Field(400, ge=1)
    max_positions: int = Field(128, ge=1)


def build_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    extra_special_tokens: Mapping[str, str] | None = None,
    chat_template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the world's text. Left padding is set in the constructor: set as an
    attribute afterwards it is not saved, and batched generation after reload silently goes wrong.
    `extra_special_tokens` (name -> token) replace the LLaVA image token, for other families' processors."""
    named = dict(extra_special_tokens or {"image_token": IMAGE_TOKEN})
    special = [*BASE_SPECIAL_TOKENS, *named.values()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=named,
        padding_side="left",
        chat_template=chat_template,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: TinyVLMSpec) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinyVLMSpec) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.vision_width,
        intermediate_size=spec.vision_width * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        projection_dim=spec.vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_width,
        intermediate_size=spec.text_width * 3,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
