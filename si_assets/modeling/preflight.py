"""Pre-flight checks: what would otherwise fail deep inside a long run, or silently degrade it, is checked before
any compute, and each failure says what to change (Dagster-free).

- `checkpoint_files`: config.json and safetensors weights are there (pickled weights are never loaded);
- `architecture`: transformers loads the config as an image-text-to-text model;
- `processor`: the processor loads and has an image processor and a tokenizer;
- `chat_template`: the processor has a chat template (prompts are never hand-written per architecture);
- `image_free_path`: the template and processor can build a prompt without an image, which the
  controlled-hallucination decoder needs for p(y | x) beside p(y | image, x); `model_runs_without_image` checks
  the model's forward on it;
- `memory`: the weights at the configured dtype, with headroom, fit the device's free memory;
- `image_tokens_fit`: DPO's `max_length` keeps every prompt's image tokens (TRL would cut them);
- `verifier_text_length`: the verifier reads whole responses (CLIP silently cuts at its context length);
- `processes`: data-parallel DPO on GPUs has a GPU per process.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

from si_assets.modeling.chat import user_prompt

PROBE_PROMPT = "Describe the image."
INFERENCE_HEADROOM = 1.3  # activations, KV cache, LoRA state and optimizer on top of the weights


class PreflightError(ValueError):
    """A check that failed: `check` names it; the message says what is wrong and what to change."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"pre-flight check '{check}' failed: {message}")
        self.check = check


@dataclass(frozen=True)
class CheckpointReport:
    architecture: str
    parameters: int
    image_tokens: int  # in a prompt with one probe image
    required_bytes: int
    available_bytes: int

    def metadata(self) -> dict[str, object]:
        return {
            "preflight/architecture": self.architecture,
            "preflight/parameters": self.parameters,
            "preflight/image_tokens": self.image_tokens,
            "preflight/required_gb": round(self.required_bytes / 1e9, 3),
            "preflight/available_gb": round(self.available_bytes / 1e9, 3),
        }


def check_checkpoint(
    path: Path, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False
) -> CheckpointReport:
    """Every check that needs only the checkpoint's files, none of its weights loaded."""
    weights = checkpoint_files(path)
    architecture_name = architecture(path, trust_remote_code)
    proc = processor(path, trust_remote_code)
    chat_template(proc)
    tokens = image_free_path(proc)
    parameters = sum(safetensors_parameters(f) for f in weights)
    required, available = memory(parameters, dtype, device)
    return CheckpointReport(architecture_name, parameters, tokens, required, available)


def checkpoint_files(path: Path) -> list[Path]:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise PreflightError("checkpoint_files", f"{path} has no config.json; give a save_pretrained folder")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        found = f" (found pickled weights {pickled[:3]}, which are never loaded)" if pickled else ""
        raise PreflightError(
            "checkpoint_files",
            f"{path} has no *.safetensors weights{found}. Convert once where you trust the file: "
            "`AutoModelForImageTextToText.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`.",
        )
    return weights


def architecture(path: Path, trust_remote_code: bool = False) -> str:
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise PreflightError(
            "architecture",
            f"transformers cannot read {path}/config.json ({exc}). A model with custom code needs "
            "`models.trust_remote_code: true` (only for code you trust).",
        ) from exc
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise PreflightError(
            "architecture",
            f"model_type {config.model_type!r} is not an image-text-to-text model "
            "(AutoModelForImageTextToText cannot load it); use a vision-language checkpoint such as LLaVA, "
            "Qwen2-VL or Idefics3/SmolVLM.",
        )
    return type(config).__name__.removesuffix("Config")


def processor(path: Path, trust_remote_code: bool = False):
    try:
        proc = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PreflightError(
            "processor", f"the processor in {path} does not load ({exc}); save it beside the model"
        ) from exc
    missing = [part for part in ("image_processor", "tokenizer") if getattr(proc, part, None) is None]
    if missing:
        raise PreflightError(
            "processor",
            f"{type(proc).__name__} in {path} has no {' or '.join(missing)}: it is not a vision-language "
            "processor; save the model's AutoProcessor (processor.save_pretrained) into the folder",
        )
    return proc


def chat_template(proc) -> None:
    if not getattr(proc, "chat_template", None) and not getattr(proc.tokenizer, "chat_template", None):
        raise PreflightError(
            "chat_template",
            f"{type(proc).__name__} has no chat template, and prompts are built only with the processor's own "
            "template. Use the instruction-tuned checkpoint, or set `processor.chat_template` and save it.",
        )


def image_token_id(proc) -> int:
    token_id = getattr(proc, "image_token_id", None)
    if token_id is None:
        token_id = proc.tokenizer.convert_tokens_to_ids(getattr(proc, "image_token", "<image>"))
    return int(token_id)


def image_free_path(proc, probe: Image.Image | None = None) -> int:
    """Builds and encodes one prompt with the image and the same prompt without it, as the decoder does; returns
    the image tokens of the first. Fails when the second cannot be built or still carries the image."""
    probe = probe or Image.new("RGB", (64, 64), (127, 127, 127))
    with_image, without_image = (user_prompt(proc, PROBE_PROMPT, with_image=w) for w in (True, False))
    image_token = getattr(proc, "image_token", None) or proc.tokenizer.convert_ids_to_tokens(image_token_id(proc))
    if image_token in without_image:
        raise PreflightError(
            "image_free_path",
            f"the prompt without an image still contains the image token {image_token!r}: the chat template "
            "inserts the image whatever the message says. Controlled-hallucination decoding needs an image-free "
            "prompt; use a template that writes the image only for an image part.",
        )
    try:
        ids = proc(images=[probe], text=[with_image, without_image], return_tensors="pt", padding=True)["input_ids"]
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the user
        raise PreflightError(
            "image_free_path",
            f"{type(proc).__name__} cannot encode a prompt without an image beside one with an image ({exc}). "
            "Controlled-hallucination decoding needs the model's image-free distribution; this model does not "
            "offer one (e.g. its processor requires an image per prompt).",
        ) from exc
    image_tokens = int((ids[0] == image_token_id(proc)).sum())
    if image_tokens == 0:
        raise PreflightError(
            "image_free_path", "the chat template drops the image part: a prompt with an image has no image tokens"
        )
    return image_tokens


@torch.no_grad()
def model_runs_without_image(model, proc) -> None:
    """One forward of the model on an image-free prompt: the decoder's second stream."""
    enc = proc(text=[user_prompt(proc, PROBE_PROMPT, with_image=False)], return_tensors="pt")
    try:
        model(**enc.to(next(model.parameters()).device))
    except Exception as exc:  # noqa: BLE001
        raise PreflightError(
            "image_free_path",
            f"{type(model).__name__} fails on a prompt without an image ({type(exc).__name__}: {exc}). "
            "Controlled-hallucination decoding needs the model's image-free distribution; this model has none.",
        ) from exc


def safetensors_parameters(file: Path) -> int:
    """Parameters stored in a safetensors file, read from its header (no tensor is loaded)."""
    with open(file, "rb") as fh:
        (header_size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_size))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def memory(
    parameters: int, dtype: torch.dtype, device: torch.device, headroom: float = INFERENCE_HEADROOM
) -> tuple[int, int]:
    required = int(parameters * torch.finfo(dtype).bits // 8 * headroom)
    available = available_memory(device)
    if required > available:
        raise PreflightError(
            "memory",
            f"the model ({parameters / 1e9:.2f}B parameters at {dtype}) needs about {required / 1e9:.1f} GB on "
            f"{device}, {available / 1e9:.1f} GB are free. Use SI_DTYPE=bfloat16 (the compute resource's dtype), "
            "a device with more memory, or a smaller model.",
        )
    return required, available


def image_tokens_fit(
    proc,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int | None,
    batch_size: int = 64,
) -> int:
    """The longest prompt with its image tokens, in tokens; fails when DPO's `max_length` would cut into it.
    `responses[i]` is the longer response of prompt i."""
    if max_length is None:
        return 0
    count = _response_tokens(proc)
    longest_prompt = longest_total = 0
    for start in range(0, len(prompts), batch_size):
        texts = [user_prompt(proc, p) for p in prompts[start : start + batch_size]]
        enc = proc(images=list(images[start : start + batch_size]), text=texts, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        longest_prompt = max(longest_prompt, *lengths)
        longest_total = max(
            longest_total, *(n + count(r) for n, r in zip(lengths, responses[start : start + batch_size]))
        )
    if longest_prompt >= max_length:
        raise PreflightError(
            "image_tokens_fit",
            f"trained_model.max_length={max_length} is not longer than the longest prompt with its image tokens "
            f"({longest_prompt} tokens): TRL would cut image tokens ('Image features and image tokens do not "
            f"match') or train on cut prompts. Set max_length to at least {longest_total} (longest prompt + "
            "response), or leave it unset.",
        )
    return longest_prompt


def _response_tokens(proc) -> Callable[[str], int]:
    tokenizer = proc.tokenizer
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + end of turn


def verifier_text_length(
    texts: Sequence[str], count_tokens: Callable[[str], int], context_length: int, max_cut_share: float = 0.0
) -> int:
    """Texts the verifier scores, in its own tokens; fails when more than `max_cut_share` of them are longer
    than its context (it would judge their beginning only). Returns how many are cut."""
    cut = [n for n in map(count_tokens, texts) if n > context_length]
    if texts and len(cut) / len(texts) > max_cut_share:
        raise PreflightError(
            "verifier_text_length",
            f"{len(cut)} of {len(texts)} texts are longer than the verifier's {context_length}-token context "
            f"(longest: {max(cut)} tokens), so CLIP would judge only their beginning. Use score_mode "
            "'sentence_mean', lower collected_responses.max_new_tokens, raise verified_pairs.max_cut_share, or "
            "use a verifier with a longer context.",
        )
    return len(cut)


def processes_fit(processes: int, device: torch.device) -> None:
    """Data-parallel training puts rank k on GPU k: there must be one per process (CPU ranks share the cores)."""
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise PreflightError(
            "processes",
            f"{processes} torchrun processes need as many GPUs, this machine has {torch.cuda.device_count()}; "
            "lower trained_model.processes",
        )
