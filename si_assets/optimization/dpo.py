"""Model optimization: TRL's DPOTrainer with a PEFT LoRA adapter, reference log-probs cached.

The reference is the adapter-disabled base. TRL refuses `precompute_ref_log_probs` for vision datasets,
so reference log-probs are computed here once, with TRL's own collator and `compute_ref_log_probs`, kept
as a table keyed by pair id, and fed back as dataset columns: epochs and re-runs with new
hyper-parameters then skip the reference forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import polars as pl
import torch
from peft import LoraConfig, PeftModel
from PIL import Image
from pydantic import Field
from safetensors import safe_open
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer

from si_assets.modeling.loading import load_checkpoint
from si_assets.organization.probes import PROBE
from si_assets.progress import progress
from si_assets.settings import Settings

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
# LoRA on the language model's projections (LLaVA / Qwen2-VL: `language_model`, Idefics3: `text_model`).
LANGUAGE_MODEL_PROJECTIONS = (
    r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
Objective = Literal["dpo", "sft"]
ProbeLoss = Literal["dpo", "sft"]


class DPOSettings(Settings):
    """DPO (TRL + PEFT LoRA) hyper-parameters."""

    objective: Objective = Field("dpo", description="'sft': the SFT term alone on the chosen responses")
    beta: float = Field(0.1, gt=0)
    rpo_alpha: float = Field(1.0, ge=0, description="weight of the SFT term on the chosen response; 0 = plain DPO")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="LD-DPO weight of tokens past the shorter response")
    # 'sft' (the default): a probe's answer is the verifier's restatement, right 84-92% of the time; the SFT term
    # anchors it without a margin growing on a one-token answer (docs/results.md, "Yes/no probes")
    probe_loss: ProbeLoss = Field(
        "sft",
        description="'sft': yes/no probe pairs train only the SFT term on their answer (their preference term is "
        "made constant, and the logged preference accuracy counts them as ties); 'dpo': the full DPO loss",
    )
    learning_rate: float = Field(1e-3, gt=0)
    # 3 epochs with a 1,800-step bootstrap CLIP gain 1.3 points more on the embedded world and take the demo 2.6
    # minutes longer on 2 CPU cores (docs/results.md, "Training length")
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(16, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    # every linear layer, vision tower and projector included: the adapter can then also learn to see the objects
    # the chosen captions name, which keeps recall (docs/results.md, "LoRA targets")
    lora_targets: str = Field(
        "all-linear",
        description=f"regex over module names (language model only: {LANGUAGE_MODEL_PROJECTIONS!r}), or 'all-linear'",
    )
    max_length: int | None = Field(None, ge=1, description="prompt (image tokens included) + response; None: no cut")
    seed: int = Field(0, ge=0)
    logging_steps: int = Field(10, ge=1)

    def losses(self) -> tuple[list[str], list[float]]:
        if self.objective == "sft":
            return ["sft"], [1.0]
        if self.rpo_alpha > 0:
            return ["sigmoid", "sft"], [1.0, self.rpo_alpha]
        return ["sigmoid"], [1.0]


class TrainingSettings(DPOSettings):
    """The optimization step: DPO settings, which optimization runs, and how it is launched."""

    optimization: Literal["dpo", "self_sft"] = Field(
        "dpo", description="'self_sft': SFT on the seed's own greedy captions, same trainer and epochs (baseline)"
    )
    launcher: Literal["in_process", "torchrun"] = Field(
        "in_process",
        description="'torchrun': data-parallel training in `processes` worker processes launched through Dagster "
        "Pipes (one per GPU; gloo on CPU); the global batch stays `batch_size`",
    )
    processes: int = Field(2, ge=1, description="torchrun workers, with launcher 'torchrun'")
    # measured where a new margin changed 3-9% of the pairs; a larger change trains anew, since a warm start at a
    # tenth of the rate barely undoes what the removed pairs taught the adapter
    warm_start_max_change: float = Field(
        0.1,
        ge=0,
        le=1,
        description="when a round trains again and at most this share of its pairs changed (a new `margin`, say), "
        "the previous adapter continues on the added pairs plus as many replayed ones instead of training anew "
        "(an update in a quarter of the time, with the same test metrics: docs/benchmarks.md); 0: train from the seed",
    )
    warm_start_lr_scale: float = Field(
        0.1,
        gt=0,
        le=1,
        description="a warm start trains at learning_rate times this: the adapter has learned most of its pairs "
        "already, and a new schedule at the full rate pulls it away from what it learned",
    )

    def dpo(self, seed: int) -> DPOSettings:
        """The trainer's settings for a round seeded `seed` (self-SFT trains the SFT term alone)."""
        fields = {name: getattr(self, name) for name in DPOSettings.model_fields}
        fields["seed"] = seed
        if self.optimization == "self_sft":
            fields["objective"] = "sft"
        return DPOSettings(**fields)


def optimizer_steps(rows: int, batch_size: int, epochs: float) -> int:
    """The optimizer steps training takes, as transformers' Trainer counts them: a step per batch (the last one
    partial), times the epochs, rounded up."""
    return math.ceil(epochs * math.ceil(rows / batch_size))


def epochs_for_steps(steps: int, rows: int, batch_size: int) -> float:
    """The (fractional) epochs that give `rows` exactly `steps` optimizer steps, so that two trainings on tables of
    different sizes get the same budget."""
    if steps < 1 or rows < 1:
        raise ValueError(f"need steps >= 1 and rows >= 1, got {steps}, {rows}")
    return (steps - 0.5) / math.ceil(rows / batch_size)  # rounds up to `steps` whatever the float error


@dataclass
class DPOResult:
    seconds: float
    steps: int
    curve: list[dict[str, float]] = field(default_factory=list)
    reference_computed: bool = False  # whether this run filled the reference cache (False: it was given)

    def curve_table(self) -> pl.DataFrame:
        """Loss, reward margin and preference accuracy per logged step."""
        wanted = ("step", "epoch", "loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")
        table = pl.DataFrame(self.curve)
        return table.select([c for c in wanted if c in table.columns])


def as_trained(pairs: pl.DataFrame, settings: DPOSettings) -> pl.DataFrame:
    """The pairs as the trainer sees them. With `probe_loss='sft'` a probe's rejected answer becomes its chosen
    one: a pair with equal sides has a constant preference term (no gradient), so only the SFT term learns from it.
    Applied before the reference log-probs are looked up, so the cache holds what was trained."""
    if settings.probe_loss == "dpo" or "task" not in pairs.columns:
        return pairs
    probes = pairs.filter(pl.col("task") == PROBE).height
    if probes and settings.objective == "dpo" and settings.rpo_alpha == 0:
        raise ValueError(
            f"probe_loss='sft' with rpo_alpha=0 would train nothing on the {probes} probe pairs: "
            "set probe_loss='dpo', or rpo_alpha > 0, or probes_per_image=0 in verified_pairs"
        )
    return pairs.with_columns(rejected=pl.when(pl.col("task") == PROBE).then("chosen").otherwise("rejected"))


def preference_dataset(
    pairs: pl.DataFrame, image_by_id: Mapping[str, Image.Image], reference: pl.DataFrame | None = None
) -> datasets.Dataset:
    """TRL's conversational vision preference format; reference log-probs joined by `pair_id` when given."""
    if reference is not None:
        pairs = pairs.join(reference.select("pair_id", *REF_COLUMNS), on="pair_id", how="left")
        missing = pairs.filter(pl.col(REF_COLUMNS[0]).is_null()).height
        if missing:
            raise ValueError(f"the reference log-prob table lacks {missing} of {pairs.height} pairs")
    data: dict[str, Any] = {
        "pair_id": pairs["pair_id"].to_list(),
        "images": [[image_by_id[i]] for i in pairs["image_id"]],
        "prompt": [[_message("user", p, with_image=True)] for p in pairs["prompt"]],
        "chosen": [[_message("assistant", c)] for c in pairs["chosen"]],
        "rejected": [[_message("assistant", r)] for r in pairs["rejected"]],
    }
    if reference is not None:
        data.update({c: pairs[c].to_list() for c in REF_COLUMNS})
    return datasets.Dataset.from_dict(data)


def _message(role: str, text: str, with_image: bool = False) -> dict:
    return {"role": role, "content": ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]}


@dataclass
class CollatorWithReference:
    """TRL's vision collator drops extra keys; carry the cached reference log-probs through it."""

    base: Callable[[list[dict]], dict]

    def __call__(self, examples: list[dict]) -> dict:
        present = [c for c in REF_COLUMNS if c in examples[0]]
        cached = {c: torch.tensor([ex.pop(c) for ex in examples], dtype=torch.float32) for c in present}
        for ex in examples:
            ex.pop("pair_id", None)
        batch = self.base(examples)
        batch.update(cached)
        return batch


class CachedReferenceDPOTrainer(DPOTrainer):
    """DPOTrainer that, for vision datasets too, takes reference log-probs from dataset columns."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.data_collator = CollatorWithReference(self.data_collator)
        self.precompute_ref_logps = REF_COLUMNS[0] in self.train_dataset.column_names

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, "pair_id", *REF_COLUMNS]

    @torch.no_grad()
    def reference_log_probs(self, log: Callable[[str], None] | None = None) -> pl.DataFrame:
        """Reference (adapter-disabled) log-probs of every pair's chosen and rejected response."""
        ids = self.train_dataset["pair_id"]
        drop = [c for c in ("pair_id", *REF_COLUMNS) if c in self.train_dataset.column_names]
        plain = self.train_dataset.remove_columns(drop)
        loader = DataLoader(plain, batch_size=self.args.per_device_train_batch_size, collate_fn=self.data_collator.base)
        chosen, rejected = [], []
        with progress(len(plain), "reference log-probs", log) as bar:
            for batch in loader:
                c, r = self.compute_ref_log_probs(self.model, self._prepare_inputs(batch))
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
                bar.update(len(c))
        return pl.DataFrame(
            {"pair_id": ids, REF_COLUMNS[0]: torch.cat(chosen).numpy(), REF_COLUMNS[1]: torch.cat(rejected).numpy()}
        )


class _CurveLogger(TrainerCallback):
    """Every `logging_steps`: the step, steps per second, time left, and the curve's values."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if self.log and logs and "loss" in logs:
            shown = {k: round(v, 4) for k, v in logs.items() if isinstance(v, float)}
            rate = state.global_step / max(time.perf_counter() - self.started, 1e-9)
            eta = (state.max_steps - state.global_step) / max(rate, 1e-9)
            self.log(f"DPO step {state.global_step}/{state.max_steps} ({rate:.2f} steps/s, {eta:.0f} s left): {shown}")


def build_trainer(
    model, processor, dataset: datasets.Dataset, settings: DPOSettings, output_dir: Path
) -> CachedReferenceDPOTrainer:
    loss_type, loss_weights = settings.losses()
    device = next(model.parameters()).device
    args = DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a share of the total steps
        beta=settings.beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        ld_alpha=settings.ld_alpha,
        max_length=settings.max_length,
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=device.type == "cpu",
        bf16=next(model.parameters()).dtype == torch.bfloat16,
        activation_checkpointing=False,  # small activations; recomputation would only cost time
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_targets,
        task_type="CAUSAL_LM",
    )
    return CachedReferenceDPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=None if isinstance(model, PeftModel) else lora,  # a given adapter trains on
    )


def compute_reference(
    model,
    processor,
    pairs: pl.DataFrame,
    image_by_id: Mapping[str, Image.Image],
    settings: DPOSettings,
    work_dir: Path,
    log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Reference log-probs of every pair, computed the way the trainer would, for caching. The model is
    left as it came (the temporary LoRA wrapper is removed again)."""
    trainer = build_trainer(model, processor, preference_dataset(pairs, image_by_id), settings, work_dir)
    table = trainer.reference_log_probs(log)
    trainer.model.unload()
    return table


def train_dpo(
    model,
    processor,
    pairs: pl.DataFrame,
    image_by_id: Mapping[str, Image.Image],
    settings: DPOSettings,
    work_dir: Path,
    reference: pl.DataFrame | None = None,
    log: Callable[[str], None] | None = None,
    cache_reference: bool = True,
    adapter: Path | None = None,
) -> tuple[Any, pl.DataFrame | None, DPOResult]:
    """Train a LoRA adapter with DPO (or the SFT term alone); `adapter`, when given, is a saved one that trains on
    (a warm start) instead of a fresh one. Returns the PEFT-wrapped model, the reference log-prob table (the given
    one, or the one computed here) and the result. Without a table and with `cache_reference=False`, TRL runs the
    reference forward at every step (for benchmarks)."""
    if pairs.height == 0:
        raise ValueError("no training pairs: every pair was discarded (lower `margin` or sample more images)")
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    trainer = build_trainer(model, processor, preference_dataset(pairs, image_by_id, reference), settings, work_dir)
    if "ref" in getattr(trainer.model, "peft_config", {}):
        # TRL's frozen copy of a given adapter would be the DPO reference; here the reference stays the seed
        # (adapters off), as in a training from scratch, so the cached reference log-probs hold for both.
        trainer.model.delete_adapter("ref")
    reference_computed = reference is None and cache_reference
    if reference_computed:
        reference = trainer.reference_log_probs(log)
        trainer.train_dataset = preference_dataset(pairs, image_by_id, reference)
        trainer.precompute_ref_logps = True
    trainer.remove_callback(PrinterCallback)  # log lines go to the run log instead of stdout
    trainer.add_callback(_CurveLogger(log))
    started = time.perf_counter()
    trainer.train()
    curve = [
        {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    result = DPOResult(time.perf_counter() - started, trainer.state.global_step, curve, reference_computed)
    return trainer.model, reference, result


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def stored_dtype(checkpoint: Path) -> torch.dtype | None:
    """The floating dtype most of a checkpoint's stored parameters have, read from its safetensors headers (no
    tensor is loaded); None where the folder holds no safetensors."""
    counts: dict[torch.dtype, int] = {}
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = weights.get_slice(name)
                dtype = SAFETENSORS_DTYPES.get(tensor.get_dtype())
                if dtype is not None:
                    counts[dtype] = counts.get(dtype, 0) + math.prod(tensor.get_shape())
    return max(counts, key=counts.__getitem__) if counts else None


def save_trained(
    peft_model,
    processor,
    merged_dir: Path,
    adapter_dir: Path,
    base: Path | None = None,
    trust_remote_code: bool = False,
) -> None:
    """The adapter alone, and the merged model that plain `from_pretrained` loads (safetensors).

    Where the model trained at another precision than `base` is stored in (bfloat16 on a GPU over float32 or
    float16 weights), the adapter is merged into a copy of `base` loaded at its stored precision on the CPU: the
    weights LoRA did not train keep their exact values and the checkpoint keeps its dtype, round after round."""
    peft_model.save_pretrained(adapter_dir)
    stored = stored_dtype(base) if base is not None else None
    if stored is None or stored == peft_model.get_base_model().dtype:
        merged = peft_model.merge_and_unload()
    else:
        full, _ = load_checkpoint(base, torch.device("cpu"), stored, trust_remote_code)
        merged = PeftModel.from_pretrained(full, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
