"""Pre-flight checks and model sources: each bad model, weights file, processor, template, length or memory setting
fails before any compute with a message that says what to change; hub ids resolve from the Hugging Face cache."""

import json
import shutil
import struct
from pathlib import Path

import dagster as dg
import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlamaForCausalLM

from resources import ArtifactStoreResource, ComputeDevice, VisionLanguageModels
from si_assets.assets.collection import SeedConfig, seed_checkpoint
from si_assets.bootstrap.tiny_vlm import CHAT_TEMPLATE
from si_assets.modeling import preflight
from si_assets.modeling.chat import ImageRowError, encode, user_prompt
from si_assets.modeling.preflight import PreflightError
from si_assets.modeling.sources import ModelSourceError, resolve_model
from si_assets.storage import Checkpoint
from tests.tiny_architectures import ARCHITECTURES, REFUSED, build_checkpoint

CPU = torch.device("cpu")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
IMAGE_PART = "{% if part['type'] == 'image' %}<image>\n{% elif"  # how the LLaVA template writes an image part


def copy_of(folder: Path, tmp_path: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_the_supported_families_pass_every_check(architecture: str, tmp_path: Path) -> None:
    folder = build_checkpoint(architecture, tmp_path / architecture)
    report = preflight.check_checkpoint(folder, CPU, torch.float32)
    assert (
        report.architecture
        == {
            "llava": "Llava",
            "qwen2_vl": "Qwen2VL",
            "idefics3": "Idefics3",
            "smolvlm": "SmolVLM",
            "gemma3": "Gemma3",
        }[architecture]
    )
    assert report.image_tokens == {"llava": 36, "qwen2_vl": 9, "idefics3": 9, "smolvlm": 9, "gemma3": 9}[architecture]
    model, processor = VisionLanguageModels(compute=ComputeDevice(device="cpu")).load(folder)
    assert report.parameters == sum(p.numel() for p in model.parameters())
    assert 0 < report.required_bytes < report.available_bytes
    preflight.model_runs_without_image(model, processor)


def test_missing_or_pickled_weights(tmp_path: Path, tiny_llava_dir: Path) -> None:
    with pytest.raises(PreflightError, match="has no config.json; give a save_pretrained folder"):
        preflight.checkpoint_files(tmp_path)
    folder = copy_of(tiny_llava_dir, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(
        PreflightError, match=r"no model.safetensors or model.safetensors.index.json \(found pickled weights .*\.bin"
    ):
        preflight.checkpoint_files(folder)
    (folder / "pytorch_model.bin").rename(folder / "weights.safetensors")  # a name transformers does not read
    with pytest.raises(PreflightError, match=r"found \['weights.safetensors'\], which transformers does not read"):
        preflight.checkpoint_files(folder)


def test_paths_are_resolved_and_named_absolute(
    tmp_path: Path, tiny_llava_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of(tiny_llava_dir, tmp_path, "models/llava")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "models")
    for given in ("~/models/llava", "llava", "./llava", "../models/llava"):
        resolved = resolve_model(given)
        assert resolved.path == tmp_path / "models" / "llava" and resolved.path.is_absolute(), given
        assert preflight.checkpoint_files(Path(given)) == [tmp_path / "models" / "llava" / "model.safetensors"]
    # A missing path is reported as the absolute path looked for, never as a missing hub model.
    for given, looked_for in (
        ("./lava", tmp_path / "models" / "lava"),
        ("~/models/lava", tmp_path / "models" / "lava"),
        ("checkpoints/llava/v1", tmp_path / "models" / "checkpoints" / "llava" / "v1"),
    ):
        with pytest.raises(ModelSourceError, match=rf"{given!r} is a path, and {looked_for}.* does not exist") as err:
            resolve_model(given)
        assert "hub" not in str(err.value)
        with pytest.raises(PreflightError, match=rf"{looked_for} does not exist"):
            preflight.checkpoint_files(Path(given))
    with pytest.raises(ModelSourceError, match=r"is a path, and .*model.safetensors is a file, not a folder"):
        resolve_model("llava/model.safetensors/")


def test_a_config_of_another_family_over_the_weights(tmp_path: Path, tiny_llava_dir: Path) -> None:
    """Qwen2-VL's config.json over LLaVA's weights: transformers would load a random Qwen2-VL, every weight missing."""
    qwen = build_checkpoint("qwen2_vl", tmp_path / "qwen")
    folder = copy_of(tiny_llava_dir, tmp_path)
    shutil.copy(qwen / "config.json", folder / "config.json")
    with pytest.raises(
        PreflightError,
        match=rf"'weights' failed: {folder / 'model.safetensors'} does not hold the weights of the model its "
        r"config.json describes \(Qwen2VLForConditionalGeneration, model_type 'qwen2_vl'\): (\d+) of its \1 "
        r"parameters are not stored .*; 104 stored tensors are not in it",
    ):
        preflight.check_checkpoint(folder, CPU, torch.float32)


def test_weights_of_another_size(tmp_path: Path, tiny_llava_dir: Path) -> None:
    folder = copy_of(tiny_llava_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        PreflightError,
        match=r"'weights' failed: .* 9 have another shape \(e.g. model.language_model.layers.0.mlp.down_proj.weight: "
        r"\[128, 384\] stored, \[128, 768\] expected\)",
    ):
        preflight.weights(preflight.architecture(folder), preflight.checkpoint_files(folder))


def test_transformers_load_time_renames_and_tied_weights_are_accepted(tiny_llava_dir: Path) -> None:
    """The tiny LLaVA is saved in the hub's layout (`language_model.model.*`), which transformers renames to
    `model.language_model.*` when loading, and ties `lm_head` to the embeddings, which are stored once."""
    stored = preflight.safetensors_shapes(tiny_llava_dir / "model.safetensors")
    assert "language_model.model.embed_tokens.weight" in stored and "lm_head.weight" not in stored
    config = preflight.architecture(tiny_llava_dir)
    assert preflight.weights(config, [tiny_llava_dir / "model.safetensors"]) == sum(
        p.numel() for p in AutoModelForImageTextToText.from_pretrained(tiny_llava_dir).parameters()
    )


def test_sharded_weights(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    build_checkpoint("qwen2_vl", tmp_path / "whole")
    AutoModelForImageTextToText.from_pretrained(tmp_path / "whole").save_pretrained(folder, max_shard_size="200KB")
    shutil.copytree(tmp_path / "whole", folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors"))
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (folder / "model.safetensors").exists()
    report = preflight.check_checkpoint(folder, CPU, torch.float32)
    assert report.parameters == preflight.check_checkpoint(tmp_path / "whole", CPU, torch.float32).parameters
    shards[-1].unlink()
    with pytest.raises(
        PreflightError, match=rf"index.json names {len(shards)} shards, 1 of them missing .*{shards[-1]}"
    ):
        preflight.checkpoint_files(folder)


def test_an_adapter_folder_is_named_as_one(tmp_path: Path, tiny_llava_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    adapter = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    adapter.save_pretrained(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    with pytest.raises(
        PreflightError,
        match=rf"{tmp_path / 'adapter'} is a PEFT \(LoRA\) adapter of '{tiny_llava_dir}' .* not a model.*"
        r"merge the adapter into it once: `PeftModel.from_pretrained",
    ):
        preflight.check_checkpoint(tmp_path / "adapter", CPU, torch.float32)


def _header(tensors: dict[str, list[int]]) -> bytes:
    offsets, start = {}, 0
    for name, shape in tensors.items():
        size = 4 * int(torch.tensor(shape).prod())
        offsets[name] = {"dtype": "F32", "shape": shape, "data_offsets": [start, start + size]}
        start += size
    header = json.dumps(offsets).encode()
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty \\(0 bytes\\)"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 5242880\n",
            "is a git-lfs pointer file, not the weights.*Run `git lfs pull`",
        ),
        (struct.pack("<Q", 10**6) + b"{}", "is truncated or not a safetensors file: its header claims 1,000,000 bytes"),
        (_header({"w": [4, 4]}) + bytes(20), "is truncated: its tensors need 64 bytes of data, the file holds 20"),
        (struct.pack("<Q", 4) + b"nope", "is not a safetensors file \\(unreadable header"),
    ],
    ids=["empty", "lfs_pointer", "header_cut", "data_cut", "not_json"],
)
def test_broken_weight_files(content: bytes, message: str, tmp_path: Path, tiny_llava_dir: Path) -> None:
    folder = copy_of(tiny_llava_dir, tmp_path)
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(PreflightError, match=rf"'checkpoint_files' failed: {folder / 'model.safetensors'} {message}"):
        preflight.check_checkpoint(folder, CPU, torch.float32)


@pytest.mark.parametrize("family", list(REFUSED))
def test_families_that_cannot_mix_image_and_image_free_rows_are_refused(family: str, tmp_path: Path) -> None:
    folder = build_checkpoint(family, tmp_path / family)
    reason = {"paligemma": "inserts <bos> where the image tokens would end", "mllama": "gated cross-attention"}
    with pytest.raises(
        PreflightError,
        match=rf"'mixed_batch' failed: model_type '{family}' cannot decode a prompt with its image and the same "
        rf"prompt without it as two rows of one batch.*{reason[family]}",
    ):
        preflight.check_checkpoint(folder, CPU, torch.float32)


def test_a_processor_that_rewrites_the_image_free_row_is_caught(tmp_path: Path) -> None:
    """Past the family refusal, the generic checks catch PaliGemma's processor on their own: it cannot encode an
    image-free prompt, and beside an image prompt it rewrites one."""
    processor = AutoProcessor.from_pretrained(build_checkpoint("paligemma", tmp_path / "pg"))
    with pytest.raises(PreflightError, match="'image_free_path' failed: PaliGemmaProcessor cannot encode a prompt"):
        preflight.image_free_path(processor)
    texts = [user_prompt(processor, "Describe the image.", with_image=w) for w in (True, False)]
    probe = Image.new("RGB", (48, 48), (200, 40, 40))
    with pytest.raises(ImageRowError, match="PaliGemmaProcessor cannot encode a prompt without an image"):
        encode(processor, texts, [[probe], []])

    class EncodesTextAlone:
        """PaliGemma's processor with a text-only path: only the rewriting is left to catch."""

        def __init__(self) -> None:
            self.tokenizer = processor.tokenizer

        def __getattr__(self, name: str):
            return getattr(processor, name)

        def __call__(self, text, images=None, **kwargs):
            return processor(text=text, images=images, **kwargs) if images else self.tokenizer(text, **kwargs)

    with pytest.raises(
        ImageRowError,
        match=r"prompt 1 of 2 wrongly: is rewritten beside image prompts \(alone it encodes as '<s>USER: Describe.*"
        r"encoded: '<s>USE<s>R: Describe",
    ):
        encode(EncodesTextAlone(), texts, [[probe], []])
    with pytest.raises(PreflightError, match="'image_free_path' failed: .* is rewritten beside image prompts"):
        preflight.image_free_path(EncodesTextAlone())


def test_a_model_whose_image_free_row_fails_beside_an_image_row_is_caught(tmp_path: Path) -> None:
    folder = build_checkpoint("mllama", tmp_path / "mllama")
    model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    assert preflight.image_free_path(processor) == 1  # its processor is fine: one cross-attended image token
    with pytest.raises(
        PreflightError, match="'mixed_batch' failed: MllamaForConditionalGeneration fails on a batch of a prompt"
    ):
        preflight.model_runs_without_image(model, processor)


def test_an_image_leaking_into_the_image_free_row_is_caught(tiny_llava_dir: Path) -> None:
    model, processor = VisionLanguageModels(compute=ComputeDevice(device="cpu")).load(tiny_llava_dir)

    class Leaky(torch.nn.Module):
        """Adds the batch's mean pixel to every row's logits: the image-free row then depends on the image."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, pixel_values=None, **kwargs):
            out = self.inner(pixel_values=pixel_values, **kwargs)
            if pixel_values is not None:
                out.logits[..., :10] += pixel_values.mean() + 1.0
            return out

    preflight.model_runs_without_image(model, processor)
    with pytest.raises(PreflightError, match=r"'mixed_batch' failed: Leaky's image-free row beside an image row"):
        preflight.model_runs_without_image(Leaky(), processor)


def test_a_text_only_model_is_not_an_image_text_to_text_model(tmp_path: Path) -> None:
    LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path)
    with pytest.raises(PreflightError, match="model_type 'llama' is not an image-text-to-text model"):
        preflight.architecture(tmp_path)


def test_a_processor_without_an_image_processor(tmp_path: Path, tiny_llava_dir: Path) -> None:
    folder = copy_of(tiny_llava_dir, tmp_path)
    (folder / "processor_config.json").unlink()
    for stale in folder.glob("preprocessor_config.json"):
        stale.unlink()
    with pytest.raises(PreflightError, match="processor' failed: the processor in .* does not load .*image processor"):
        preflight.processor(folder)


def test_a_processor_without_a_chat_template(tiny_llava_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    with pytest.raises(PreflightError, match="has no chat template"):
        preflight.chat_template(processor)


def test_a_template_that_always_inserts_the_image_has_no_image_free_path(tiny_llava_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    processor.chat_template = CHAT_TEMPLATE.replace("USER: ", "USER: <image>\n").replace(
        IMAGE_PART, "{% if false %}{% elif"
    )
    with pytest.raises(
        PreflightError, match="without an image still contains the image token '<image>': the chat template inserts"
    ):
        preflight.image_free_path(processor)


def test_a_template_that_drops_the_image(tiny_llava_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    processor.chat_template = CHAT_TEMPLATE.replace(IMAGE_PART, "{% if false %}{% elif")
    with pytest.raises(PreflightError, match="the chat template drops the image part: the prompt with an image has no"):
        preflight.image_free_path(processor)


def test_a_model_that_cannot_run_without_an_image(tiny_llava_dir: Path) -> None:
    class NeedsPixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, pixel_values, **kwargs):
            return pixel_values

    with pytest.raises(PreflightError, match="NeedsPixels fails on a prompt without an image .*TypeError"):
        preflight.model_runs_without_image(NeedsPixels(), AutoProcessor.from_pretrained(tiny_llava_dir))


def test_a_model_too_large_for_free_memory() -> None:
    with pytest.raises(PreflightError, match=r"needs about 26000.0 GB on cpu, .* Use SI_DTYPE=bfloat16"):
        preflight.memory(10**13, torch.float16, CPU, headroom=1.3)


def test_max_length_that_cuts_image_tokens(tiny_llava_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    images = [Image.new("RGB", (48, 48), (200, 40, 40))] * 2
    prompts, responses = ["Describe the image.", "Describe."], ["a red star.", "a red star and a blue ring."]
    longest = preflight.image_tokens_fit(processor, images, prompts, responses, max_length=200)
    assert longest > 36  # the image tokens are counted
    assert preflight.image_tokens_fit(processor, images, prompts, responses, max_length=None) == 0
    with pytest.raises(PreflightError, match=r"max_length=40 is not longer than .* \(\d+ tokens\).* at least \d+"):
        preflight.image_tokens_fit(processor, images, prompts, responses, max_length=40)


def test_texts_longer_than_the_verifier_context() -> None:
    words = len  # one token per character, for the arithmetic
    assert preflight.verifier_text_length(["short", "tiny"], words, context_length=8) == 0
    with pytest.raises(PreflightError, match="1 of 2 texts are longer than the verifier's 8-token context"):
        preflight.verifier_text_length(["short", "much too long"], words, context_length=8)
    assert preflight.verifier_text_length(["short", "much too long"], words, 8, max_cut_share=0.5) == 1


def hub_cache(tmp_path: Path, folder: Path, repo: str = "acme/tiny-llava") -> Path:
    """The Hugging Face cache layout `hf download` leaves: a snapshot per commit, refs naming commits."""
    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return cache


def test_hub_ids_resolve_from_the_cache_at_a_pinned_revision(tmp_path: Path, tiny_llava_dir: Path) -> None:
    cache = hub_cache(tmp_path, tiny_llava_dir)
    for revision in (None, "main", COMMIT):
        resolved = resolve_model("acme/tiny-llava", revision, cache_dir=cache)
        assert resolved.path.name == COMMIT and resolved.origin == f"acme/tiny-llava@{COMMIT}"
    with pytest.raises(
        ModelSourceError,
        match=r"'acme/tiny-llava' at v2 is not in the Hugging Face cache.*"
        r"`hf download acme/tiny-llava --revision v2`",
    ):
        resolve_model("acme/tiny-llava", "v2", cache_dir=cache)
    with pytest.raises(ModelSourceError, match="neither a folder nor a hub id"):
        resolve_model("not a model", cache_dir=cache)
    with pytest.raises(ModelSourceError, match="revision 'main' was given for the local folder"):
        resolve_model(str(tiny_llava_dir), "main")


def test_seed_checkpoint_takes_a_hub_base_and_refuses_a_bad_one(
    tmp_path: Path, tiny_llava_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path, tiny_llava_dir)))
    context = dg.build_asset_context(partition_key="round-0001")
    models = VisionLanguageModels(compute=ComputeDevice(device="cpu"))
    store = ArtifactStoreResource(root=str(tmp_path / "store"))
    bootstrap = Checkpoint(tiny_llava_dir)
    output = seed_checkpoint(context, SeedConfig(base="acme/tiny-llava", revision="main"), models, store, bootstrap)
    assert output.metadata["source"].value == f"base: acme/tiny-llava@{COMMIT}"
    assert output.metadata["preflight/image_tokens"].value == 36
    text_only = tmp_path / "text-only"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(text_only)
    for base, message in (
        ("acme/missing", "'acme/missing' is not in the Hugging Face cache"),
        (str(text_only), "pre-flight check 'architecture' failed"),
    ):
        with pytest.raises(dg.Failure, match=message):
            seed_checkpoint(context, SeedConfig(base=base), models, store, bootstrap)


def test_more_torchrun_processes_than_gpus() -> None:
    preflight.processes_fit(4, CPU)  # CPU ranks share the cores
    gpus = torch.cuda.device_count()  # 0 in CI; the check must also hold where there are GPUs
    expected = rf"{gpus + 4} torchrun processes need as many GPUs, this machine has {gpus};"
    with pytest.raises(PreflightError, match=expected):
        preflight.processes_fit(gpus + 4, torch.device("cuda"))


def test_the_mixed_row_distance_weighs_tokens_by_probability() -> None:
    peaked = torch.tensor([10.0, 0.0, -20.0, -20.0])
    assert preflight.total_variation(peaked, peaked) == 0.0
    assert preflight.total_variation(torch.tensor([30.0, 0.0]), torch.tensor([0.0, 30.0])) == pytest.approx(1.0)
    # the unlikely tail moving by whole units (half precision's rounding at -20) is not a leak ...
    assert preflight.total_variation(peaked, torch.tensor([10.0, 0.0, -18.0, -22.0])) < 1e-8
    # ... a likely token's probability moving is
    moved = preflight.total_variation(peaked, torch.tensor([10.0, 9.0, -20.0, -20.0]))
    assert moved > preflight.HALF_PRECISION_TOLERANCE
