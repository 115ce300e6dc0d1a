"""Controlled-hallucination decoding: sample from p_mix = (1-h)·p_img + h·p_txt.

Each request is decoded as two rows of ONE batch: the prompt with the image and the same prompt without
it. `model.generate` runs both streams with one KV cache; a logits processor mixes each row pair's
next-token distributions, samples one token from the mixture with the request's own generator and forces
both rows to it, so the two streams always share the prefix y_<t. Nothing here is architecture-specific:
prompts come from the processor's chat template and the image-free row simply has no image part.
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
from transformers import LogitsProcessor, LogitsProcessorList

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
        h = self.h if self.step >= self.settings.prior_delay else torch.zeros_like(self.h)
        self.step += 1
        log_mix = mix_log_probs(scores[:n].float(), scores[n:].float(), h.to(scores.device), **self._mix_kwargs()).cpu()
        if self.settings.temperature == 0:
            tokens = log_mix.argmax(dim=-1)
        else:
            probs = top_p_filter(log_mix, self.settings.top_p).exp()
            tokens = torch.stack(
                [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)]
            )
        tokens = torch.cat([tokens, tokens]).to(scores.device)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, tokens.unsqueeze(1), 0.0)

    def _mix_kwargs(self) -> dict:
        return {"temperature": self.settings.temperature, "mix_space": self.settings.mix_space}


def decode_batch(model, processor, requests: Sequence[MixedRequest], settings: SamplerSettings) -> list[str]:
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


@torch.no_grad()
def decode_mixed(
    model,
    processor,
    requests: Sequence[MixedRequest],
    settings: SamplerSettings,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
    desc: str = "mixed decoding",
) -> list[str]:
    """Responses for every request, in order. Requests are batched by (similar) prompt length to keep the
    image-free rows' padding small."""
    model.eval()
    order = np.argsort([len(r.prompt) for r in requests], kind="stable")
    out: list[str | None] = [None] * len(requests)
    with progress(len(requests), desc, log) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for i, text in zip(idx, decode_batch(model, processor, [requests[i] for i in idx], settings)):
                out[i] = text
            bar.update(len(idx))
    return out  # type: ignore[return-value]
