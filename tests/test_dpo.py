"""DPO through TRL with a LoRA adapter: cached reference log-probs, the saved checkpoint, bad input."""

from pathlib import Path

import polars as pl
import pytest
import torch
from transformers import AutoModelForImageTextToText

from si_assets.bootstrap.seed_model import tokenizer_corpus
from si_assets.bootstrap.tiny_vlm import TinyVLMSpec, build_model, build_processor, build_tokenizer
from si_assets.modeling.loading import load_checkpoint
from si_assets.optimization.dpo import (
    LANGUAGE_MODEL_PROJECTIONS,
    DPOSettings,
    as_trained,
    compute_reference,
    epochs_for_steps,
    optimizer_steps,
    save_trained,
    stored_dtype,
    train_dpo,
)
from si_assets.optimization.self_training import sft_pairs
from si_assets.organization.probes import PROBE
from si_assets.world import WorldSpec, decode_png, generate_split

SETTINGS = DPOSettings(epochs=2, batch_size=4, learning_rate=5e-3, logging_steps=1)


@pytest.fixture(scope="module")
def world():
    spec = WorldSpec(seed=3, splits={"seed_train": 24, "clip_train": 2, "improve": 2, "dev": 2, "test": 2})
    df = generate_split(spec, "seed_train")
    tok = build_tokenizer(tokenizer_corpus(df["caption"].to_list(), spec.kinds), 300)
    pairs = pl.DataFrame(
        {
            "pair_id": df["id"][:8],
            "image_id": df["id"][:8],
            "prompt": ["Describe the image."] * 8,
            "chosen": df["caption"][:8],
            "rejected": df["caption"][8:16],
        }
    )
    return tok, pairs, {i: decode_png(b) for i, b in zip(df["id"], df["image_png"])}


def _fresh_model(tok):
    torch.manual_seed(0)
    return build_model(tok, TinyVLMSpec()), build_processor(tok, TinyVLMSpec())


class ForwardCounter:
    def __init__(self, model) -> None:
        self.calls = 0
        model.register_forward_hook(self)

    def __call__(self, *args) -> None:
        self.calls += 1


def test_cached_reference_gives_the_same_training_with_half_the_forwards(world, tmp_path: Path) -> None:
    tok, pairs, images = world
    model, processor = _fresh_model(tok)
    counter = ForwardCounter(model)
    _, reference, live = train_dpo(model, processor, pairs, images, SETTINGS, tmp_path / "a")
    forwards_live = counter.calls
    assert reference.height == pairs.height and live.reference_computed

    model, processor = _fresh_model(tok)
    counter = ForwardCounter(model)
    _, reused, cached = train_dpo(model, processor, pairs, images, SETTINGS, tmp_path / "b", reference=reference)
    assert reused is reference and not cached.reference_computed
    steps = cached.steps
    assert steps == live.steps == 4 == optimizer_steps(8, 4, 2)  # 8 pairs / batch 4 × 2 epochs
    # live: one pass to fill the cache, then one policy forward per step; cached: policy forwards only
    assert counter.calls == steps
    assert forwards_live == steps + 2
    live_loss = [e["loss"] for e in live.curve]
    cached_loss = [e["loss"] for e in cached.curve]
    assert cached_loss == pytest.approx(live_loss, rel=1e-4)

    # TRL's own way for vision data: a reference forward at every step, twice the forwards, the same losses.
    model, processor = _fresh_model(tok)
    counter = ForwardCounter(model)
    _, none, per_step = train_dpo(model, processor, pairs, images, SETTINGS, tmp_path / "c", cache_reference=False)
    assert none is None and counter.calls == 2 * steps
    assert [e["loss"] for e in per_step.curve] == pytest.approx(live_loss, rel=1e-4)


def test_reference_matches_trl_live_reference(world, tmp_path: Path) -> None:
    """The cached log-probs are what TRL computes with the adapter disabled (first step: policy == reference)."""
    tok, pairs, images = world
    model, processor = _fresh_model(tok)
    reference = compute_reference(model, processor, pairs, images, SETTINGS, tmp_path)
    assert not any("lora" in name for name, _ in model.named_modules())  # the temporary wrapper is gone
    again = compute_reference(model, processor, pairs, images, SETTINGS, tmp_path)
    assert reference.equals(again)
    assert (reference["ref_chosen_logps"] < 0).all() and (reference["ref_rejected_logps"] < 0).all()


@pytest.mark.parametrize("targets", ["all-linear", LANGUAGE_MODEL_PROJECTIONS], ids=["all-linear", "language-model"])
def test_saved_model_loads_with_plain_from_pretrained(world, tmp_path: Path, targets: str) -> None:
    """The merged checkpoint carries the adapter wherever it was: every linear layer by default (the vision tower
    too), or only the language model's projections."""
    tok, pairs, images = world
    model, processor = _fresh_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = SETTINGS.model_copy(update={"lora_targets": targets})
    peft_model, _, _ = train_dpo(model, processor, pairs, images, settings, tmp_path / "w")
    save_trained(peft_model, processor, tmp_path / "merged", tmp_path / "merged" / "adapter")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "merged" / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", use_safetensors=True)
    after = reloaded.state_dict()
    changed = [k for k in before if "language_model" in k and not torch.equal(before[k], after[k])]
    assert changed, "the merged adapter should change the language model's projections"
    vision_unchanged = all(torch.equal(before[k], after[k]) for k in before if "vision_tower" in k)
    assert vision_unchanged == (targets == LANGUAGE_MODEL_PROJECTIONS)


def test_a_lower_precision_run_merges_into_the_base_at_its_stored_precision(world, tmp_path: Path) -> None:
    """Trained in bfloat16 (as on a GPU) over float32 weights: the merged checkpoint stays float32, the weights
    LoRA did not touch keep their exact values, and the trained projections move."""
    tok, pairs, images = world
    model, processor = _fresh_model(tok)
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    assert stored_dtype(base) == torch.float32 and stored_dtype(tmp_path) is None
    low, processor = load_checkpoint(base, torch.device("cpu"), torch.bfloat16)
    settings = SETTINGS.model_copy(update={"lora_targets": LANGUAGE_MODEL_PROJECTIONS})
    peft_model, _, _ = train_dpo(low, processor, pairs, images, settings, tmp_path / "w")
    save_trained(peft_model, processor, tmp_path / "merged", tmp_path / "merged" / "adapter", base)
    assert stored_dtype(tmp_path / "merged") == torch.float32
    before = model.state_dict()
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", use_safetensors=True).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("language_model" in k and "proj" in k for k in changed), sorted(changed)[:5]


def _lora_weights(peft_model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}


def test_a_warm_start_continues_the_saved_adapter(world, tmp_path: Path) -> None:
    """Given a saved adapter, training goes on from its weights (not from a fresh, zero-effect LoRA), and moves
    them: at a vanishing learning rate the result stays the saved adapter."""
    tok, pairs, images = world
    model, processor = _fresh_model(tok)
    first, _, _ = train_dpo(model, processor, pairs, images, SETTINGS, tmp_path / "w1")
    saved = _lora_weights(first)
    save_trained(first, processor, tmp_path / "merged", tmp_path / "merged" / "adapter")
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)

    still = SETTINGS.model_copy(update={"learning_rate": 1e-12})
    model, processor = _fresh_model(tok)
    warm, _, result = train_dpo(
        model, processor, pairs.head(4), images, still, tmp_path / "w2", adapter=tmp_path / "merged" / "adapter"
    )
    continued = _lora_weights(warm)
    assert result.steps == 2 and continued.keys() == saved.keys()
    assert all(torch.allclose(continued[k], saved[k], atol=1e-6) for k in saved)
    model, processor = _fresh_model(tok)
    cold, _, _ = train_dpo(model, processor, pairs.head(4), images, still, tmp_path / "w3")
    assert all(v.abs().max() < 1e-6 for k, v in _lora_weights(cold).items() if "lora_B" in k)

    model, processor = _fresh_model(tok)
    moved, _, _ = train_dpo(
        model, processor, pairs.head(4), images, SETTINGS, tmp_path / "w4", adapter=tmp_path / "merged" / "adapter"
    )
    assert any(not torch.allclose(v, saved[k]) for k, v in _lora_weights(moved).items())


def test_no_pairs_and_missing_reference_rows_are_clear_errors(world, tmp_path: Path) -> None:
    tok, pairs, images = world
    model, processor = _fresh_model(tok)
    with pytest.raises(ValueError, match="no training pairs"):
        train_dpo(model, processor, pairs.head(0), images, SETTINGS, tmp_path)
    partial = pl.DataFrame(
        {"pair_id": pairs["pair_id"][:3], "ref_chosen_logps": [-1.0] * 3, "ref_rejected_logps": [-1.0] * 3}
    )
    with pytest.raises(ValueError, match="lacks 5 of 8 pairs"):
        train_dpo(model, processor, pairs, images, SETTINGS, tmp_path, reference=partial)


def test_sft_objective_trains_on_chosen_only(world, tmp_path: Path) -> None:
    """The self-training baselines use the same trainer with the SFT term alone: its loss must fall."""
    tok, pairs, images = world
    model, processor = _fresh_model(tok)
    data = sft_pairs(pairs["image_id"], pairs["prompt"], pairs["chosen"])
    assert (data["chosen"] == data["rejected"]).all()
    settings = SETTINGS.model_copy(update={"objective": "sft", "epochs": 4, "learning_rate": 2e-2})
    _, _, result = train_dpo(model, processor, data, images, settings, tmp_path)
    losses = [e["loss"] for e in result.curve]
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_sft_probes_train_only_their_answer(world, tmp_path: Path) -> None:
    """probe_loss='sft': a probe's sides become equal, whose preference term is constant, so DPO + SFT term
    trains exactly like the SFT term alone; caption pairs are left as they are."""
    tok, pairs, images = world
    mixed = pairs.with_columns(task=pl.Series(["caption"] * 4 + [PROBE] * 4))
    sft_probes = SETTINGS  # probe_loss 'sft' is the default
    trained_rows = as_trained(mixed, sft_probes)
    assert trained_rows.head(4).equals(mixed.head(4))
    assert (trained_rows.tail(4)["rejected"] == mixed.tail(4)["chosen"]).all()
    assert as_trained(mixed, SETTINGS.model_copy(update={"probe_loss": "dpo"})).equals(mixed)
    assert as_trained(pairs, sft_probes).equals(pairs)  # tables without tasks (the SFT baselines' pairs)

    def adapter(rows: pl.DataFrame, objective: str) -> torch.Tensor:
        model, processor = _fresh_model(tok)
        settings = sft_probes.model_copy(update={"objective": objective, "learning_rate": 2e-2})
        peft_model, _, _ = train_dpo(model, processor, rows, images, settings, tmp_path / objective)
        return torch.cat([p.detach().flatten() for k, p in peft_model.named_parameters() if "lora_" in k])

    as_probes, sft_alone = adapter(trained_rows.tail(4), "dpo"), adapter(trained_rows.tail(4), "sft")
    with_preference = adapter(mixed.tail(4), "dpo")  # the same rows with their other answer losing
    # equal up to float noise (which Adam scales up where gradients are near zero); a real preference moves far more
    noise = float((as_probes - sft_alone).abs().max())
    assert noise < 1e-3 < float((with_preference - sft_alone).abs().max()) / 10


def test_sft_probes_without_the_sft_term_are_refused(world) -> None:
    _, pairs, _ = world
    probes = pairs.with_columns(task=pl.lit(PROBE))
    plain_dpo = DPOSettings(rpo_alpha=0.0)  # probe_loss 'sft' by default
    with pytest.raises(ValueError, match="train nothing on the 8 probe pairs"):
        as_trained(probes, plain_dpo)
    assert as_trained(pairs, plain_dpo).equals(pairs)  # no probes, nothing to refuse
    assert as_trained(probes, plain_dpo.model_copy(update={"probe_loss": "dpo"})).equals(probes)


def test_a_step_budget_is_met_by_tables_of_any_size(world, tmp_path: Path) -> None:
    """Baselines train as many optimizer steps as the loop, whatever their row count: epochs follow the rows."""
    tok, pairs, images = world
    for rows in (3, 5, 8):
        epochs = epochs_for_steps(7, rows, SETTINGS.batch_size)
        assert optimizer_steps(rows, SETTINGS.batch_size, epochs) == 7
    model, processor = _fresh_model(tok)
    settings = SETTINGS.model_copy(update={"epochs": epochs_for_steps(7, 5, SETTINGS.batch_size)})
    _, _, result = train_dpo(model, processor, pairs.head(5), images, settings, tmp_path)
    assert result.steps == 7  # what the trainer really did
    for loop_rows in range(100, 6000, 37):  # the loop's steps against every baseline table size
        loop_steps = optimizer_steps(loop_rows, 16, 2.0)
        for rows in (1500, 3000, loop_rows // 3 + 1):
            steps = optimizer_steps(rows, 16, epochs_for_steps(loop_steps, rows, 16))
            assert abs(steps - loop_steps) <= 0.02 * loop_steps
    with pytest.raises(ValueError):
        epochs_for_steps(0, 5, 4)
