"""The controlled-hallucination decoder: mixing math, the h = 0 / h = 1 limits on every tested family, the streams
decoder against the `generate` one, images one list per prompt, determinism."""

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from si_assets.bootstrap.seed_model import tokenizer_corpus
from si_assets.bootstrap.tiny_vlm import TinyVLMSpec, build_model, build_processor, build_tokenizer
from si_assets.modeling.chat import encode, image_token_ids, user_prompt
from si_assets.modeling.generation import continue_without_image, generate_greedy
from si_assets.modeling.mixed_decoding import (
    STREAM_FAMILIES,
    MixedRequest,
    SamplerSettings,
    choose_decoder,
    decode_mixed,
    mix_log_probs,
    top_p_filter,
)
from si_assets.world import WorldSpec, decode_png, generate_split
from tests.tiny_architectures import ARCHITECTURES, build_checkpoint

GREEDY = SamplerSettings(temperature=0.0, max_new_tokens=8)
# Small enough that random weights at std 0.2 still give different texts for different inputs (wider, deeper
# random towers saturate and decode everything alike).
RANDOM_SPEC = TinyVLMSpec(vision_width=96, vision_layers=3, text_width=96, text_layers=2)


def world_images(count: int = 6) -> list[Image.Image]:
    spec = WorldSpec(seed=7, splits={"seed_train": 40, "clip_train": 2, "improve": 2, "dev": 2, "test": 2})
    return [decode_png(b) for b in generate_split(spec, "seed_train")["image_png"].head(count)]


def mixed_requests(images: list[Image.Image]) -> list[MixedRequest]:
    """h = 0, 0.3 and 1 on every image, alternating between prompts of two lengths."""
    prompts = ["Describe the image.", "List every object you can see in this picture."]
    return [
        MixedRequest(im, prompts[k % 2], h, seed=10 * k + j)
        for k, im in enumerate(images)
        for j, h in enumerate((0.0, 0.3, 1.0))
    ]


@pytest.fixture(scope="module")
def random_llava():
    spec = WorldSpec(seed=7, splits={"seed_train": 40, "clip_train": 2, "improve": 2, "dev": 2, "test": 2})
    df = generate_split(spec, "seed_train")
    tok = build_tokenizer(tokenizer_corpus(df["caption"].to_list(), spec.kinds), 300)
    torch.manual_seed(0)
    model = build_model(tok, RANDOM_SPEC).eval()
    with torch.no_grad():  # the default init is so small that every input decodes to the same text
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model, build_processor(tok, RANDOM_SPEC), world_images()


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def family(request: pytest.FixtureRequest, random_llava, tmp_path_factory: pytest.TempPathFactory):
    """(model, processor, images) of each tested family, loaded through the Auto* classes; LLaVA at the sizes whose
    random weights still say different things for different images."""
    if request.param == "llava":
        return random_llava
    folder = build_checkpoint(request.param, tmp_path_factory.mktemp(request.param))
    model = AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True).eval()
    return model, AutoProcessor.from_pretrained(folder), world_images()


def test_probability_mixture_is_the_convex_combination() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(3, 11), torch.randn(3, 11)
    h = torch.tensor([0.0, 0.3, 1.0])
    mixed = mix_log_probs(a, b, h, temperature=0.7, mix_space="probs").exp()
    expected = (1 - h[:, None]) * torch.softmax(a / 0.7, -1) + h[:, None] * torch.softmax(b / 0.7, -1)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(3))


def test_logit_mixture_interpolates_logits() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(2, 7), torch.randn(2, 7)
    h = torch.tensor([0.25, 0.75])
    mixed = mix_log_probs(a, b, h, temperature=1.0, mix_space="logits")
    torch.testing.assert_close(mixed, torch.log_softmax((1 - h[:, None]) * a + h[:, None] * b, -1))


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = top_p_filter(log_probs, 0.8).isfinite()[0].tolist()
    assert kept == [True, True, False, False]
    assert top_p_filter(log_probs, 0.1).isfinite()[0].tolist() == [True, False, False, False]
    assert torch.equal(top_p_filter(log_probs, 1.0), log_probs)


def test_h0_equals_plain_image_conditioned_greedy(family) -> None:
    model, processor, images = family
    prompts = ["Describe the image.", "Is there a star in the image?", "List the objects you see."] * 2
    plain = generate_greedy(model, processor, images, prompts, max_new_tokens=8)
    mixed = decode_mixed(model, processor, [MixedRequest(im, p, 0.0, 1) for im, p in zip(images, prompts)], GREEDY)
    assert mixed == plain
    assert len(set(mixed)) > 1  # a random model still says different things for different inputs
    singles = [generate_greedy(model, processor, [im], [p], max_new_tokens=8)[0] for im, p in zip(images, prompts)]
    assert plain == singles  # a batch's neighbours and padding change nothing


def test_h1_ignores_the_image(family) -> None:
    model, processor, images = family
    prompt = "Describe the image."
    enc = encode(processor, [user_prompt(processor, prompt, with_image=False)], [[]])
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    text_only = processor.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()
    mixed = decode_mixed(model, processor, [MixedRequest(im, prompt, 1.0, 3) for im in images], GREEDY)
    assert mixed == [text_only] * len(images)
    grounded = decode_mixed(model, processor, [MixedRequest(im, prompt, 0.0, 3) for im in images], GREEDY)
    assert grounded != mixed  # the image does change what the model says


@pytest.mark.parametrize(
    "settings",
    [GREEDY, SamplerSettings(temperature=1.0, max_new_tokens=10), SamplerSettings(temperature=1.0, prior_delay=2)],
    ids=["greedy", "sampled", "prior_delay"],
)
def test_the_streams_decoder_decodes_what_generate_decodes(family, settings: SamplerSettings) -> None:
    """Separate caches, one prefill per image and per image-free prompt and no image-free row at h = 0 change no
    token: h = 0, 0 < h < 1 and h = 1 on each image, prompts of two lengths."""
    model, processor, images = family
    assert choose_decoder(model) == "streams"
    reference = decode_mixed(model, processor, mixed_requests(images), settings, batch_size=8, decoder="generate")
    assert decode_mixed(model, processor, mixed_requests(images), settings, batch_size=8) == reference
    assert len(set(reference)) > 1


def test_rows_that_end_leave_the_batch_and_change_nothing(family) -> None:
    """An end-of-text token that stops rows at different steps: the streams decoder drops them and still decodes
    what `generate` decodes."""
    model, processor, images = family
    enc = encode(processor, [user_prompt(processor, "Describe the image.")], [[images[0]]])
    greedy = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = int(greedy[0, -2])  # the first image's grounded rows end at step 3
    try:
        stopped = decode_mixed(model, processor, mixed_requests(images), GREEDY, batch_size=8, decoder="generate")
        assert decode_mixed(model, processor, mixed_requests(images), GREEDY, batch_size=8) == stopped
    finally:
        model.generation_config.eos_token_id = eos
    full = decode_mixed(model, processor, mixed_requests(images), GREEDY, batch_size=8)
    assert len(stopped[0]) < len(full[0]) and any(s == f for s, f in zip(stopped, full))


def test_families_the_streams_decoder_does_not_know_fall_back_to_generate(random_llava) -> None:
    model, _, _ = random_llava
    unknown = types.SimpleNamespace(config=types.SimpleNamespace(model_type="paligemma"))
    assert choose_decoder(unknown) == "generate" and choose_decoder(model, "generate") == "generate"
    with pytest.raises(ValueError, match="streams decoder is tested on .*not 'paligemma'"):
        choose_decoder(unknown, "streams")
    assert set(ARCHITECTURES) <= STREAM_FAMILIES


def test_the_chosen_decoder_is_logged(random_llava) -> None:
    model, processor, images = random_llava
    lines: list[str] = []
    decode_mixed(model, processor, [MixedRequest(images[0], "Describe the image.", 0.5, 1)], GREEDY, log=lines.append)
    assert lines[0] == "mixed decoding: streams decoder for llava"


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_images_go_one_list_per_prompt(architecture: str, tmp_path: Path) -> None:
    """Every family's processor takes one image list per prompt, empty for an image-free prompt, and puts image
    tokens in the image rows only; Gemma3's and SmolVLM's read a flat list as one prompt's images and refuse it."""
    processor = AutoProcessor.from_pretrained(build_checkpoint(architecture, tmp_path))
    image = Image.new("RGB", (48, 48), (200, 40, 40))
    texts = [user_prompt(processor, "Describe.", with_image=w) for w in (True, True, False, False)]
    enc = encode(processor, texts, [[image], [image], [], []])
    counts = torch.isin(enc["input_ids"], torch.tensor(image_token_ids(processor))).sum(dim=1).tolist()
    assert counts[0] == counts[1] > 0 and counts[2:] == [0, 0]
    if architecture in ("gemma3", "smolvlm"):
        with pytest.raises(ValueError, match=r"Found \[1, 1, 0, 0\] .* tokens and \[2\] images per sample"):
            processor(text=texts, images=[image, image], return_tensors="pt", padding=True)


def test_prior_delay_decodes_its_first_tokens_from_the_image(random_llava) -> None:
    """With h = 1 the first `prior_delay` tokens are the image-conditioned ones, the rest follow the prior."""
    model, processor, images = random_llava
    prompt = "Describe the image."
    grounded = decode_mixed(model, processor, [MixedRequest(im, prompt, 0.0, 1) for im in images], GREEDY)
    prior = [MixedRequest(im, prompt, 1.0, 1) for im in images]
    assert (
        decode_mixed(model, processor, prior, GREEDY.model_copy(update={"prior_delay": GREEDY.max_new_tokens}))
        == grounded
    )
    delayed = decode_mixed(model, processor, prior, GREEDY.model_copy(update={"prior_delay": 3}))
    ids = processor.tokenizer
    assert all(ids.encode(d)[:3] == ids.encode(g)[:3] for d, g in zip(delayed, grounded))
    assert delayed != grounded and delayed != decode_mixed(model, processor, prior, GREEDY)


def test_prior_continuation_is_the_image_free_greedy_text(random_llava) -> None:
    model, processor, images = random_llava
    prompt = "Describe the image."
    enc = processor(text=[user_prompt(processor, prompt, with_image=False)], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    text_only = processor.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert continue_without_image(model, processor, [prompt], [""], max_new_tokens=8) == [text_only]
    prefixes = ["", "a red circle,", "a blue star and"]
    batched = continue_without_image(model, processor, [prompt] * 3, prefixes, max_new_tokens=8)
    singles = [continue_without_image(model, processor, [prompt], [p], max_new_tokens=8)[0] for p in prefixes]
    assert batched == singles and len(set(batched)) > 1  # left padding keeps each row its own
    with pytest.raises(ValueError, match="1 prompts but 2 prefixes"):
        continue_without_image(model, processor, [prompt], ["", ""])


def test_sampling_depends_only_on_the_request(random_llava) -> None:
    """Same seed → identical response, whatever the batch size and neighbours; other seeds differ."""
    model, processor, images = random_llava
    settings = SamplerSettings(temperature=1.0, max_new_tokens=8)
    requests = [MixedRequest(im, "Describe the image.", k / 5, seed=k) for k, im in enumerate(images)]
    one_batch = decode_mixed(model, processor, requests, settings, batch_size=6)
    singles = decode_mixed(model, processor, requests, settings, batch_size=1)
    again = decode_mixed(model, processor, requests[::-1], settings, batch_size=4)[::-1]
    assert one_batch == singles == again
    reseeded = [MixedRequest(r.image, r.prompt, r.h, r.seed + 100) for r in requests]
    assert decode_mixed(model, processor, reseeded, settings) != one_batch


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplerSettings(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplerSettings(top_p=0)
    with pytest.raises(ValueError, match="mix_space"):
        SamplerSettings(mix_space="tokens")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prior_delay"):
        SamplerSettings(prior_delay=-1)
    with pytest.raises(ValueError, match="hallucination ratio"):
        MixedRequest(None, "x", 1.5, 0)  # type: ignore[arg-type]


def test_numpy_seeds_are_accepted(random_llava) -> None:
    model, processor, images = random_llava
    out = decode_mixed(model, processor, [MixedRequest(images[0], "Describe the image.", 0.5, np.uint64(7))], GREEDY)
    assert len(out) == 1
