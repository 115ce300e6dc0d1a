"""Data collection: which responses to decode for each unlabeled image, and the decoded table.

Per image, `n_samples` positives (low h) and `n_negatives` negatives (high h). Negative k shares the
sampler seed of positive k, so the two differ only in grounding. Seeds and ratios derive from
(base seed, image id, k) alone: adding images or changing the batch size changes no other row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import numpy as np
import polars as pl
from PIL import Image
from pydantic import Field, model_validator

from si_assets.modeling.mixed_decoding import Decoder, MixedRequest, SamplerSettings, decode_mixed
from si_assets.settings import Settings

POSITIVE, NEGATIVE = "positive", "negative"


class HallucinationRatios(Settings):
    """h_pos ~ N(mu_pos, sd_pos), h_neg ~ N(mu_neg, sd_neg), both clipped to [0, 1], h_neg > h_pos."""

    mu_pos: float = Field(0.0, ge=0, le=1)
    sd_pos: float = Field(0.05, ge=0)
    # At h .15 a negative is the model's own caption with a few more wrong mentions; it leads another image's
    # caption as a negative by 1.7-1.8 precision points over three training seeds, where h .35 led by 0.5 and h .7
    # did worse (docs/results.md, "The hallucination ratio").
    mu_neg: float = Field(0.15, ge=0, le=1)
    sd_neg: float = Field(0.05, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> HallucinationRatios:
        if self.mu_pos >= self.mu_neg:
            raise ValueError(f"need mu_pos < mu_neg, got mu_pos={self.mu_pos}, mu_neg={self.mu_neg}")
        return self


class SamplingSettings(HallucinationRatios, SamplerSettings):
    """The collection step: how many responses per image, their ratios and sampler, and how the work is cut.
    Negative k shares positive k's sampler seed, so the two differ only in h."""

    n_samples: int = Field(8, ge=1, description="positives per image; CLIP picks the chosen one (1 = literal recipe)")
    n_negatives: int = Field(4, ge=1, description="negatives per image; CLIP picks the rejected one")
    seed: int = Field(0, ge=0, description="with the round key, the seed of every sampler draw")
    batch_size: int = Field(64, ge=1, description="requests per generate call (each is two rows)")
    chunk_size: int = Field(1024, ge=1, description="requests per stored chunk: a killed run resumes after the last")
    shards: int = Field(1, ge=1, description="sampling steps that split the chunks; run in parallel per `gpu` pool")
    decoder: Decoder = Field(
        "auto", description="streams (separate KV caches, shared prefill), generate, or auto: streams where tested"
    )

    @model_validator(mode="after")
    def _negatives_fit(self) -> SamplingSettings:
        if self.n_negatives > self.n_samples:
            raise ValueError(f"n_negatives ({self.n_negatives}) must not exceed n_samples ({self.n_samples})")
        return self


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, the same on every machine and Python run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def draw_ratios(rng: np.random.Generator, ratios: HallucinationRatios) -> tuple[float, float]:
    """One (h_pos, h_neg) with h_neg > h_pos: the negative is redrawn until it is more hallucinated."""
    h_pos = float(np.clip(rng.normal(ratios.mu_pos, ratios.sd_pos), 0.0, 1.0))
    for _ in range(100):
        h_neg = float(np.clip(rng.normal(ratios.mu_neg, ratios.sd_neg), 0.0, 1.0))
        if h_neg > h_pos:
            return h_pos, h_neg
    # Only reachable when h_pos sits at the top of the negative distribution: nudge the pair apart.
    h_pos = min(h_pos, 1.0 - 1e-3)
    return h_pos, h_pos + 1e-3


def plan_requests(
    images: pl.DataFrame, n_samples: int, n_negatives: int, ratios: HallucinationRatios, base_seed: int
) -> pl.DataFrame:
    """One row per response to decode: image_id, prompt, role, sample, h, seed."""
    if n_samples < 1 or not 1 <= n_negatives <= n_samples:
        raise ValueError(f"need n_samples >= 1 and 1 <= n_negatives <= n_samples, got {n_samples}, {n_negatives}")
    rows: dict[str, list] = {k: [] for k in ("image_id", "prompt", "role", "sample", "h", "seed")}

    def add(image_id: str, prompt: str, role: str, k: int, h: float, seed: int) -> None:
        for key, value in zip(rows, (image_id, prompt, role, k, h, seed)):
            rows[key].append(value)

    for image_id, prompt in zip(images["id"], images["prompt"]):
        for k in range(n_samples):
            seed = stable_seed(base_seed, image_id, k)
            h_pos, h_neg = draw_ratios(np.random.default_rng(seed), ratios)
            add(image_id, prompt, POSITIVE, k, h_pos, seed)
            if k < n_negatives:
                add(image_id, prompt, NEGATIVE, k, h_neg, seed)
    return pl.DataFrame(rows, schema_overrides={"sample": pl.Int32, "seed": pl.UInt64})


def decode_plan(
    model,
    processor,
    plan: pl.DataFrame,
    image_by_id: Mapping[str, Image.Image],
    settings: SamplerSettings,
    model_version: str,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
    decoder: Decoder = "auto",
) -> pl.DataFrame:
    """The plan with its decoded `response`, the sampler settings and the model version on every row."""
    missing = set(plan["image_id"]) - set(image_by_id)
    if missing:
        raise KeyError(f"{len(missing)} planned image ids have no image, e.g. {sorted(missing)[:3]}")
    requests = [
        MixedRequest(image_by_id[i], p, h, s)
        for i, p, h, s in zip(plan["image_id"], plan["prompt"], plan["h"], plan["seed"])
    ]
    responses = decode_mixed(model, processor, requests, settings, batch_size=batch_size, log=log, decoder=decoder)
    return plan.with_columns(
        response=pl.Series(responses, dtype=pl.String),
        temperature=pl.lit(settings.temperature),
        top_p=pl.lit(settings.top_p),
        max_new_tokens=pl.lit(settings.max_new_tokens),
        mix_space=pl.lit(settings.mix_space),
        prior_delay=pl.lit(settings.prior_delay),
        model_version=pl.lit(model_version),
    )
