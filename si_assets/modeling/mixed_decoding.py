"""Controlled-hallucination decoding: sample from p_mix = (1-h)·p_img + h·p_txt.

Each request is decoded as two streams that share the response prefix y_<t: the prompt with the image and the same
prompt without it. At every step the two next-token distributions are mixed, one token is sampled from the mixture
with the request's own generator, and both streams are fed it. Two decoders do this:

- **streams** (the default where the family is known): each stream has its own KV cache, so the image-free prompt is
  never padded to the image prompt's length; an image prompt is prefilled once for all requests that share it (the
  positives and negatives of one image) and an image-free prompt once per batch, then every request gets its row;
  a request with h = 0 has no image-free row; finished requests leave the batch. Positions come from the model's
  own generation hook, so Qwen2-VL's 3-D rotary positions are handled as `generate` handles them.
- **generate**: one `model.generate` over 2·n rows, image-free rows left-padded beside the image rows, mixed by a
  logits processor. Any family whose processor can batch both kinds of prompt runs it: the fallback, and the
  reference the streams decoder is tested against.

Nothing is architecture-specific beyond the list of families the streams decoder is tested on: prompts come from the
processor's chat template and the image-free prompt simply has no image part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from transformers import Cache, LogitsProcessor, LogitsProcessorList

from si_assets.modeling.chat import encode, user_prompt
from si_assets.progress import progress
from si_assets.settings import Settings

MixSpace = Literal["probs", "logits"]


class SamplerSettings(Settings):
    """How each token is drawn from the mixture (the same for a positive and its negative)."""

    temperature: float = Field(0.7, ge=0, description="0 = greedy on the mixture")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(32, ge=1)
    mix_space: MixSpace = Field("probs", description="mix probabilities (the method) or logits")
    # the response then begins grounded and the language prior takes over mid-caption, where co-occurrence
    # hallucinations arise
    prior_delay: int = Field(0, ge=0, description="tokens decoded from the image alone before mixing starts")

    def sampler_key(self) -> str:
        """What a decoded response depends on among the sampling settings (subclasses add fields that do not)."""
        return json.dumps({name: getattr(self, name) for name in SamplerSettings.model_fields})  # in field order


@dataclass(frozen=True)
class MixedRequest:
    image: Image.Image
    prompt: str
    h: float  # hallucination ratio: 0 = image-conditioned, 1 = language prior only
    seed: int  # the sampler's seed; a positive and its negative share it

    def __post_init__(self) -> None:
        if not 0.0 <= self.h <= 1.0:
            raise ValueError(f"hallucination ratio must be in [0, 1], got {self.h}")


def mix_log_probs(
    logits_img: torch.Tensor, logits_txt: torch.Tensor, h: torch.Tensor, temperature: float, mix_space: MixSpace
) -> torch.Tensor:
    """Log of the mixed next-token distribution, (B, V). `h` is (B,). With temperature 0 the mixture is
    taken at temperature 1 (it is only argmax-ed)."""
    t = temperature if temperature > 0 else 1.0
    h = h.to(logits_img.dtype).unsqueeze(-1)
    if mix_space == "logits":
        return torch.log_softmax(((1 - h) * logits_img + h * logits_txt) / t, dim=-1)
    logp_img = torch.log_softmax(logits_img / t, dim=-1)
    logp_txt = torch.log_softmax(logits_txt / t, dim=-1)
    # log((1-h)·p_img + h·p_txt), computed stably; log(0) = -inf drops a stream entirely at h = 0 or 1.
    return torch.logaddexp(torch.log1p(-h) + logp_img, torch.log(h) + logp_txt)


def top_p_filter(log_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (always at least one)."""
    if top_p >= 1.0:
        return log_probs
    sorted_lp, order = torch.sort(log_probs, descending=True, dim=-1)
    cumulative = sorted_lp.exp().cumsum(dim=-1)
    drop_sorted = cumulative - sorted_lp.exp() >= top_p  # mass before this token already reached top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return log_probs.masked_fill(drop, float("-inf"))


class MixtureSampler(LogitsProcessor):
    """Mixes row i (with image) and row B+i (without) and forces both to one token sampled from the mix.

    `generate` then runs greedy, so the token chosen here is the one emitted. Each request draws from its
    own `torch.Generator`, so a response depends only on its seed, never on its batch neighbours."""

    def __init__(self, h: Sequence[float], seeds: Sequence[int], settings: SamplerSettings) -> None:
        self.h = torch.tensor(list(h), dtype=torch.float32)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.settings = settings
        self.step = 0  # tokens emitted so far: generate calls the processor once per new token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = len(self.generators)
        if scores.shape[0] != 2 * n:
            raise ValueError(f"expected {2 * n} rows (with and without image), got {scores.shape[0]}")
        tokens = self.next_tokens(scores[:n], scores[n:], torch.arange(n))
        tokens = torch.cat([tokens, tokens]).to(scores.device)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, tokens.unsqueeze(1), 0.0)

    def next_tokens(self, logits_img: torch.Tensor, logits_txt: torch.Tensor, requests: torch.Tensor) -> torch.Tensor:
        """The next token of each request in `requests` (indices into this sampler's requests), drawn from its
        mixture; call once per decoding step. Returns them on the CPU."""
        h = self.h[requests] if self.step >= self.settings.prior_delay else torch.zeros(len(requests))
        self.step += 1
        log_mix = mix_log_probs(
            logits_img.float(), logits_txt.float(), h.to(logits_img.device), **self._mix_kwargs()
        ).cpu()
        if self.settings.temperature == 0:
            return log_mix.argmax(dim=-1)
        probs = top_p_filter(log_mix, self.settings.top_p).exp()
        return torch.stack(
            [torch.multinomial(p, 1, generator=self.generators[r])[0] for p, r in zip(probs, requests.tolist())]
        )

    def _mix_kwargs(self) -> dict:
        return {"temperature": self.settings.temperature, "mix_space": self.settings.mix_space}


Decoder = Literal["auto", "streams", "generate"]
# Families whose generation hooks the streams decoder is tested against `generate` on (tests/test_mixed_decoding.py).
STREAM_FAMILIES = frozenset({"llava", "qwen2_vl", "idefics3", "smolvlm", "gemma3"})


def choose_decoder(model, decoder: Decoder = "auto") -> Literal["streams", "generate"]:
    """`auto`: the streams decoder for a family it is tested on, else `generate`."""
    family = getattr(model.config, "model_type", None)
    if decoder == "streams" and family not in STREAM_FAMILIES:
        tested = ", ".join(sorted(STREAM_FAMILIES))
        raise ValueError(f"the streams decoder is tested on {tested}, not {family!r}: use decoder auto or generate")
    if decoder == "auto":
        return "streams" if family in STREAM_FAMILIES else "generate"
    return decoder


def decode_batch_generate(model, processor, requests: Sequence[MixedRequest], settings: SamplerSettings) -> list[str]:
    """Decode one batch of requests in a single `generate` call over 2·len(requests) rows."""
    with_image = [user_prompt(processor, r.prompt, with_image=True) for r in requests]
    without_image = [user_prompt(processor, r.prompt, with_image=False) for r in requests]
    images = [[r.image] for r in requests] + [[] for _ in requests]
    enc = encode(processor, with_image + without_image, images).to(next(model.parameters()).device)
    sampler = MixtureSampler([r.h for r in requests], [r.seed for r in requests], settings)
    generated = model.generate(
        **enc,
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([sampler]),
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    new_tokens = generated[: len(requests), enc["input_ids"].shape[1] :]
    return [t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]


@dataclass
class _Stream:
    """One stream's decoding state, a row per live request: its KV cache, attention mask, last positions and
    next-token logits."""

    cache: Cache
    mask: torch.Tensor  # (rows, length)
    positions: torch.Tensor  # (rows, 1), or (planes, rows, 1) for multi-dimensional rotary positions
    logits: torch.Tensor  # (rows, vocabulary)

    @classmethod
    def prefill(cls, model, enc, rows: torch.Tensor) -> _Stream:
        """Prefill each distinct prompt of `enc` once, then give row i the state of prompt `rows[i]`. Positions come
        from the model's own hook (left padding, and Qwen2-VL's 3-D positions, as `generate` computes them)."""
        positions = model._prepare_position_ids_for_generation(enc["input_ids"], dict(enc))
        out = model(**enc, position_ids=positions, use_cache=True, logits_to_keep=1)
        out.past_key_values.batch_select_indices(rows)
        return cls(out.past_key_values, enc["attention_mask"][rows], positions[..., rows, -1:], out.logits[rows, -1])

    def step(self, model, tokens: torch.Tensor) -> None:
        """Feed each row its token and compute the next logits."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.mask), 1)], dim=1)
        self.positions = self.positions + 1
        out = model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache, self.logits = out.past_key_values, out.logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask, self.positions, self.logits = self.mask[rows], self.positions[..., rows, :], self.logits[rows]


def _distinct(keys: Sequence) -> tuple[list[int], torch.Tensor]:
    """The index of each distinct key's first occurrence, and for every key the number of its distinct key."""
    number: dict = {}
    firsts: list[int] = []
    for i, key in enumerate(keys):
        if key not in number:
            number[key] = len(firsts)
            firsts.append(i)
    return firsts, torch.tensor([number[key] for key in keys])


def decode_batch_streams(model, processor, requests: Sequence[MixedRequest], settings: SamplerSettings) -> list[str]:
    """Decode one batch of requests with the image and image-free streams in separate KV caches."""
    device = next(model.parameters()).device
    n = len(requests)
    image_keys = [(id(r.image), r.prompt) for r in requests]  # the positives and negatives of one image share it
    unique, image_rows = _distinct(image_keys)
    enc = encode(
        processor,
        [user_prompt(processor, requests[i].prompt, with_image=True) for i in unique],
        [[requests[i].image] for i in unique],
    ).to(device)
    image_stream = _Stream.prefill(model, enc, image_rows.to(device))

    # Rows of the image-free stream: the requests that ever mix it in (h = 0 reads the image stream alone).
    mixing = torch.tensor([i for i, r in enumerate(requests) if r.h > 0], dtype=torch.long)
    text_stream = None
    if len(mixing):
        unique, text_rows = _distinct([requests[i].prompt for i in mixing.tolist()])
        prompts = [user_prompt(processor, requests[mixing[i]].prompt, with_image=False) for i in unique]
        text_enc = encode(processor, prompts, [[] for _ in prompts]).to(device)
        text_stream = _Stream.prefill(model, text_enc, text_rows.to(device))

    sampler = MixtureSampler([r.h for r in requests], [r.seed for r in requests], settings)
    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []))
    live = torch.arange(n)  # requests still decoding, in image-stream row order
    text_of = torch.full((n,), -1, dtype=torch.long)  # each request's row in the image-free stream, -1 without one
    text_of[mixing] = torch.arange(len(mixing))
    responses: list[list[int]] = [[] for _ in range(n)]
    for step in range(settings.max_new_tokens):
        logits_txt = image_stream.logits.clone()  # rows without an image-free stream mix with weight h = 0
        has_text = text_of[live] >= 0
        if text_stream is not None and has_text.any():
            logits_txt[has_text.to(device)] = text_stream.logits
        tokens = sampler.next_tokens(image_stream.logits, logits_txt, live)
        for request, token in zip(live.tolist(), tokens.tolist()):
            responses[request].append(token)
        running = ~torch.isin(tokens, eos)
        if not running.any() or step == settings.max_new_tokens - 1:
            break
        if not running.all():
            live, tokens, has_text = live[running], tokens[running], has_text[running]
            image_stream.keep(running.nonzero()[:, 0].to(device))
            if text_stream is not None:
                text_stream.keep(text_of[live][has_text].to(device))
                text_of[live[has_text]] = torch.arange(int(has_text.sum()))
        image_stream.step(model, tokens.to(device))
        if text_stream is not None and has_text.any():
            text_stream.step(model, tokens[has_text].to(device))
    return [t.strip() for t in processor.batch_decode(responses, skip_special_tokens=True)]


@torch.no_grad()
def decode_mixed(
    model,
    processor,
    requests: Sequence[MixedRequest],
    settings: SamplerSettings,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
    desc: str = "mixed decoding",
    decoder: Decoder = "auto",
) -> list[str]:
    """Responses for every request, in order. Requests are batched by (similar) prompt length, keeping the requests
    of one image together; `decoder` picks the decoder (`auto`: streams where the family is known)."""
    model.eval()
    chosen = choose_decoder(model, decoder)
    if log is not None:
        log(f"{desc}: {chosen} decoder for {getattr(model.config, 'model_type', type(model).__name__)}")
    decode_batch = decode_batch_streams if chosen == "streams" else decode_batch_generate
    order = np.argsort([len(r.prompt) for r in requests], kind="stable")
    out: list[str | None] = [None] * len(requests)
    with progress(len(requests), desc, log) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for i, text in zip(idx, decode_batch(model, processor, [requests[i] for i in idx], settings)):
                out[i] = text
            bar.update(len(idx))
    return out  # type: ignore[return-value]
