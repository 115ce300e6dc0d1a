"""Pre-flight checks: what would otherwise fail deep inside a long run, or silently degrade it, is checked before
any compute, and each failure says what to change (Dagster-free).

- `checkpoint_files`: the folder exists (`~` and relative paths resolved) and holds config.json and whole
  safetensors weights (`model.safetensors`, or the shards `model.safetensors.index.json` names): not empty, not a
  git-lfs pointer, not cut short; a PEFT adapter folder is named as one (pickled weights are never loaded);
- `architecture`: transformers loads the config as an image-text-to-text model;
- `mixed_batch`: the family can decode a prompt with its image and the same prompt without it as rows of one batch,
  which controlled-hallucination decoding does for every request (PaliGemma and Mllama cannot: `UNMIXABLE`);
  `model_runs_without_image` checks the model's forward on such a batch;
- `weights`: the stored tensors are the ones the config describes: every parameter of the model built from
  config.json (on the meta device, nothing allocated) is stored with its shape, under the names transformers'
  load-time renames give (a config of one family over another family's weights would load as a random model);
- `processor`: the processor loads and has an image processor and a tokenizer;
- `chat_template`: the processor has a chat template (prompts are never hand-written per architecture);
- `image_free_path`: the template and processor can build a prompt without an image, which the
  controlled-hallucination decoder needs for p(y | x) beside p(y | image, x), and encode it beside an image prompt
  unchanged, with image tokens in the image row only;
- `memory`: the weights at the configured dtype, with headroom, fit the device's free memory;
- `image_tokens_fit`: DPO's `max_length` keeps every prompt's image tokens (TRL would cut them);
- `verifier_text_length`: the verifier reads whole responses (CLIP silently cuts at its context length);
- `processes`: data-parallel DPO on GPUs has a GPU per process.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PretrainedConfig
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

from si_assets.modeling.chat import ImageRowError, encode, image_token_ids, user_prompt
from si_assets.modeling.sources import absolute

PROBE_PROMPT = "Describe the image."
INFERENCE_HEADROOM = 1.3  # activations, KV cache, LoRA state and optimizer on top of the weights
WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
TESTED_FAMILIES = "LLaVA, Qwen2-VL, Idefics3, SmolVLM or Gemma3"
# Families whose image-free row cannot share a batch with image rows, by model_type: why, as measured on tiny
# random-weight builds of each (tests/test_preflight.py).
UNMIXABLE = {
    "paligemma": "PaliGemma's processor refuses a prompt without an image, and beside an image prompt it rewrites "
    "the image-free one: it inserts <bos> where the image tokens would end, inside the prompt's text, so the second "
    "row is another prompt",
    "mllama": "Mllama (Llama 3.2 Vision) reads the image through gated cross-attention layers that an image-free "
    "batch skips. Beside an image prompt, its processor gives an image-free prompt no aspect-ratio inputs (the "
    "forward fails), and with them padded the image-free row still attends to a blank image through those layers, "
    "so its next-token distribution is not the image-free one",
}
# The image-free row's next-token distribution beside an image row against alone (total variation distance), by
# compute dtype: padding and batch shape change float rounding only, a row that sees image features moves by far
# more. Total variation weighs tokens by probability, so half precision's rounding of the unlikely tail, where
# log-probabilities of -20 move by whole units, does not count.
MIXED_ROW_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_PRECISION_TOLERANCE = 0.02


def total_variation(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Half the L1 distance between the two softmax distributions: 0 when equal, 1 when disjoint."""
    return 0.5 * float((torch.softmax(logits_a.float(), -1) - torch.softmax(logits_b.float(), -1)).abs().sum())


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
    path = absolute(path)
    files = checkpoint_files(path)
    config = architecture(path, trust_remote_code)
    mixed_batch(config)
    parameters = weights(config, files, trust_remote_code)
    proc = processor(path, trust_remote_code)
    chat_template(proc)
    tokens = image_free_path(proc)
    required, available = memory(parameters, dtype, device)
    return CheckpointReport(type(config).__name__.removesuffix("Config"), parameters, tokens, required, available)


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files `from_pretrained` would read from the folder, each checked to be whole."""
    path = absolute(path)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise PreflightError("checkpoint_files", f"{path} {what}; give the save_pretrained folder of the model")
    files = _weight_files(path)
    if not files and (path / ADAPTER_CONFIG).is_file():
        raise PreflightError("checkpoint_files", _adapter_message(path))
    if not (path / "config.json").is_file():
        raise PreflightError("checkpoint_files", f"{path} has no config.json; give a save_pretrained folder")
    if not files:
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        others = sorted(p.name for p in path.glob("*.safetensors"))
        if pickled:
            found = f" (found pickled weights {pickled[:3]}, which are never loaded). Convert once where you trust "
            found += "the file: `AutoModelForImageTextToText.from_pretrained(folder).save_pretrained(folder)`."
        else:
            found = f" (found {others[:3]}, which transformers does not read as the model's weights)" if others else ""
            found += f". Save the model with `save_pretrained`, which writes {WEIGHTS_FILE} and its config.json."
        raise PreflightError("checkpoint_files", f"{path} has no {WEIGHTS_FILE} or {WEIGHTS_INDEX}{found}")
    for file in files:
        safetensors_shapes(file)  # whole and readable, or a message naming it
    return files


def _weight_files(path: Path) -> list[Path]:
    """As `from_pretrained` looks for them: the single file first, else the shards the index names."""
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    index = path / WEIGHTS_INDEX
    if not index.is_file():
        return []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as exc:
        raise PreflightError("checkpoint_files", f"{index} is not a safetensors index ({exc})") from exc
    missing = [name for name in shards if not (path / name).is_file()]
    if missing:
        raise PreflightError(
            "checkpoint_files",
            f"{index} names {len(shards)} shards, {len(missing)} of them missing (e.g. {path / missing[0]}): "
            "download or copy the checkpoint again",
        )
    return [path / name for name in shards]


def _adapter_message(path: Path) -> str:
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except ValueError:
        base = None
    of = f" of {base!r}" if base else ""
    return (
        f"{path} is a PEFT (LoRA) adapter{of} ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS}), not a model: it has no "
        f"config.json and no {WEIGHTS_FILE}. Give the model the adapter was trained on as the base, or merge the "
        "adapter into it once: `PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), "
        "adapter).merge_and_unload().save_pretrained(out)`, with `AutoProcessor.from_pretrained(base)"
        ".save_pretrained(out)` beside it."
    )


def safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the file's header (no tensor is loaded), after checking the file is whole:
    not empty, not a git-lfs pointer, its header and its data as long as the header says."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if size == 0:
            raise PreflightError(
                "checkpoint_files", f"{file} is empty (0 bytes): an interrupted download or copy; fetch it again"
            )
        if LFS_POINTER.startswith(head) and fh.read(len(LFS_POINTER) - 8) == LFS_POINTER[8:]:
            raise PreflightError(
                "checkpoint_files",
                f"{file} is a git-lfs pointer file, not the weights: the repository was cloned without its large "
                "files. Run `git lfs pull` in it (or download with `hf download`).",
            )
        if len(head) < 8:
            raise PreflightError("checkpoint_files", f"{file} is truncated: {size} bytes, no safetensors header")
        (header_size,) = struct.unpack("<Q", head)
        if 8 + header_size > size:
            raise PreflightError(
                "checkpoint_files",
                f"{file} is truncated or not a safetensors file: its header claims {header_size:,} bytes, the file "
                f"has {size:,}. Download or copy it again.",
            )
        try:
            header = json.loads(fh.read(header_size))
            tensors = {name: t for name, t in header.items() if name != "__metadata__"}
            shapes = {name: tuple(int(d) for d in t["shape"]) for name, t in tensors.items()}
            data_end = max((int(t["data_offsets"][1]) for t in tensors.values()), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise PreflightError(
                "checkpoint_files", f"{file} is not a safetensors file (unreadable header: {exc})"
            ) from exc
    if 8 + header_size + data_end > size:
        raise PreflightError(
            "checkpoint_files",
            f"{file} is truncated: its tensors need {data_end:,} bytes of data, the file holds "
            f"{size - 8 - header_size:,}. Download or copy it again.",
        )
    return shapes


def architecture(path: Path, trust_remote_code: bool = False) -> PretrainedConfig:
    """The checkpoint's config, when transformers can build an image-text-to-text model from it."""
    path = absolute(path)
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
            f"model_type {config.model_type!r} is not an image-text-to-text model (AutoModelForImageTextToText "
            f"cannot load it); use a vision-language checkpoint such as {TESTED_FAMILIES}.",
        )
    return config


def mixed_batch(config: PretrainedConfig) -> None:
    """Refuses the families known not to decode an image row and its image-free row in one batch."""
    reason = UNMIXABLE.get(config.model_type)
    if reason:
        raise PreflightError(
            "mixed_batch",
            f"model_type {config.model_type!r} cannot decode a prompt with its image and the same prompt without it "
            f"as two rows of one batch, which controlled-hallucination decoding does for every request: {reason}. "
            f"Use a family that can ({TESTED_FAMILIES} are tested).",
        )


def weights(config: PretrainedConfig, files: Sequence[Path], trust_remote_code: bool = False) -> int:
    """The stored tensors against the model `config` builds: every parameter present under the name transformers
    loads it by, with its shape. Returns the stored parameter count. Tensors that a load-time converter fuses or
    splits are checked by name only."""
    stored: dict[str, tuple[int, ...]] = {}
    for file in files:
        stored.update(safetensors_shapes(file))
    parameters = sum(math.prod(shape) for shape in stored.values())
    if getattr(config, "quantization_config", None):  # packed tensors and their scales: no shape to compare
        return parameters
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    loaded, unknown, mismatched = _match_stored(model, stored, expected)
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    missing = sorted(
        name
        for name, _ in model.named_parameters(remove_duplicate=False)
        if name not in loaded
        and not (name in tied and tied[name] in loaded)  # tied to a stored tensor, e.g. lm_head to the embeddings
        and not any(p.search(name) for p in ignored)
    )
    if missing or mismatched:
        label = files[0] if len(files) == 1 else files[0].parent / WEIGHTS_INDEX
        parts = []
        if missing:
            total = sum(1 for _ in model.named_parameters(remove_duplicate=False))
            parts.append(f"{len(missing)} of its {total} parameters are not stored (e.g. {missing[0]})")
        if mismatched:
            name, got, want = mismatched[0]
            parts.append(
                f"{len(mismatched)} have another shape (e.g. {name}: {list(got)} stored, {list(want)} expected)"
            )
        if unknown:
            parts.append(f"{len(unknown)} stored tensors are not in it (e.g. {unknown[0]})")
        raise PreflightError(
            "weights",
            f"{label} does not hold the weights of the model its config.json describes ({type(model).__name__}, "
            f"model_type {config.model_type!r}): {'; '.join(parts)}. Loaded, those parameters would be random (or "
            "the load would fail). The config.json and the weights come from different models or sizes: put the "
            "config.json saved with these weights beside them.",
        )
    return parameters


def _match_stored(
    model, stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> tuple[set[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(names loaded, stored names the model has no place for, (name, stored, expected) shape mismatches), with
    the key renames and conversions transformers applies when loading this model (its conversion mapping)."""
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    converter_of = {pattern: c for c in converters for pattern in c.source_patterns}
    prefix = model.base_model_prefix
    loaded: set[str] = set()
    unknown: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, shape in sorted(stored.items()):
        name, pattern = rename_source_key(key, renamings, converters, prefix, expected)
        if name not in expected and key in expected:  # as transformers does: the key as stored, prefix adjusted
            name, pattern = rename_source_key(key, [], [], prefix, expected)
        if name not in expected:
            unknown.append(key)
        elif pattern is not None:  # fused or split at load: every target of the converter is provided
            targets = converter_of[pattern].target_patterns
            loaded.update({name.replace(targets[0], t) for t in targets} if targets[0] in name else {name})
        else:
            loaded.add(name)
            if shape != expected[name]:
                mismatched.append((name, shape, expected[name]))
    return loaded, unknown, mismatched


def processor(path: Path, trust_remote_code: bool = False):
    path = absolute(path)
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


def image_free_path(proc, probe: Image.Image | None = None) -> int:
    """Builds one prompt with the image and the same prompt without it, as the decoder does, and encodes them
    alone and side by side; returns the image tokens of the first. Fails when the second cannot be built, still
    carries the image, or is encoded differently beside the first."""
    probe = probe or _probe_image()
    with_image, without_image = (user_prompt(proc, PROBE_PROMPT, with_image=w) for w in (True, False))
    marker = getattr(proc, "image_token", None) or proc.tokenizer.convert_ids_to_tokens(image_token_ids(proc)[0])
    if marker not in with_image:
        raise PreflightError(
            "image_free_path",
            f"the chat template drops the image part: the prompt with an image has no image token {marker!r}; "
            "use a template that writes the image for an image part.",
        )
    if marker in without_image:
        raise PreflightError(
            "image_free_path",
            f"the prompt without an image still contains the image token {marker!r}: the chat template "
            "inserts the image whatever the message says. Controlled-hallucination decoding needs an image-free "
            "prompt; use a template that writes the image only for an image part.",
        )
    try:
        rows = [encode(proc, [text], [images]) for text, images in ((with_image, [probe]), (without_image, []))]
        both = encode(proc, [with_image, without_image], [[probe], []])
    except ImageRowError as exc:
        raise PreflightError(
            "image_free_path",
            f"{exc}. The decoder's image row must carry the image tokens and its image-free row none, its text "
            "unchanged; use a chat template that writes the image for an image part only, and a processor that "
            "leaves a prompt without an image as it is.",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the user
        raise PreflightError(
            "image_free_path",
            f"{type(proc).__name__} cannot encode a prompt without an image beside one with an image ({exc}). "
            "Controlled-hallucination decoding needs the model's image-free distribution; this model does not "
            "offer one (e.g. its processor requires an image per prompt).",
        ) from exc
    for row, (name, alone) in enumerate(zip(("with", "without"), rows)):
        beside, alone_ids = both["input_ids"][row][both["attention_mask"][row].bool()], alone["input_ids"][0]
        if not torch.equal(beside, alone_ids):
            shown = [proc.tokenizer.decode(ids)[:160] for ids in (beside, alone_ids)]
            raise PreflightError(
                "image_free_path",
                f"{type(proc).__name__} encodes the prompt {name} an image differently beside the other prompt "
                f"({shown[0]!r}) than alone ({shown[1]!r}): the decoder would read another prompt than it asks.",
            )
    return int(torch.isin(rows[0]["input_ids"][0], torch.tensor(image_token_ids(proc))).sum())


def _probe_image() -> Image.Image:
    return Image.new("RGB", (64, 64), (127, 127, 127))


@torch.no_grad()
def model_runs_without_image(model, proc) -> None:
    """The model's forward on an image-free prompt alone (the decoder's second stream) and beside the same prompt
    with an image (how the decoder runs it): the image-free row must give the same next-token distribution both
    ways, or the mixture would read an image-free distribution that saw image features."""
    device = next(model.parameters()).device
    with_image, without_image = (user_prompt(proc, PROBE_PROMPT, with_image=w) for w in (True, False))
    try:
        alone = model(**encode(proc, [without_image], [[]]).to(device)).logits[0, -1]
    except Exception as exc:  # noqa: BLE001
        raise PreflightError(
            "image_free_path",
            f"{type(model).__name__} fails on a prompt without an image ({type(exc).__name__}: {exc}). "
            "Controlled-hallucination decoding needs the model's image-free distribution; this model has none.",
        ) from exc
    try:
        beside = model(**encode(proc, [with_image, without_image], [[_probe_image()], []]).to(device)).logits[1, -1]
    except Exception as exc:  # noqa: BLE001
        raise PreflightError(
            "mixed_batch",
            f"{type(model).__name__} fails on a batch of a prompt with an image and one without "
            f"({type(exc).__name__}: {exc}); controlled-hallucination decoding runs both as rows of one batch.",
        ) from exc
    dtype = next(model.parameters()).dtype
    moved = total_variation(beside, alone)
    if moved > MIXED_ROW_TOLERANCE.get(dtype, HALF_PRECISION_TOLERANCE):
        raise PreflightError(
            "mixed_batch",
            f"{type(model).__name__}'s image-free row beside an image row is not the image-free prompt alone: its "
            f"next-token distribution moves by a total variation of {moved:.3g} (tolerance at {dtype}: "
            f"{MIXED_ROW_TOLERANCE.get(dtype, HALF_PRECISION_TOLERANCE)}). The image leaks into the image-free "
            "stream, so the mixture would not mix in the language prior; this family cannot be decoded this way.",
        )


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
        enc = encode(proc, texts, [[image] for image in images[start : start + batch_size]])
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
