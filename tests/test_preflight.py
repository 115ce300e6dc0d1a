"""Pre-flight checks and model sources: each bad model, processor, template, length or memory setting fails
before any compute with a message that says what to change; hub ids resolve from the Hugging Face cache."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlamaConfig, LlamaForCausalLM

from resources import ArtifactStoreResource, ComputeDevice, VisionLanguageModels
from si_assets.assets.collection import SeedConfig, seed_checkpoint
from si_assets.bootstrap.tiny_vlm import CHAT_TEMPLATE
from si_assets.modeling import preflight
from si_assets.modeling.preflight import PreflightError
from si_assets.modeling.sources import ModelSourceError, resolve_model
from si_assets.storage import Checkpoint
from tests.tiny_architectures import ARCHITECTURES, build_checkpoint

CPU = torch.device("cpu")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def copy_of(folder: Path, tmp_path: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_the_supported_families_pass_every_check(architecture: str, tmp_path: Path) -> None:
    folder = build_checkpoint(architecture, tmp_path / architecture)
    report = preflight.check_checkpoint(folder, CPU, torch.float32)
    assert report.architecture in {"Llava", "Qwen2VL", "Idefics3"}
    assert report.image_tokens == {"llava": 36, "qwen2_vl": 9, "idefics3": 9}[architecture]
    assert report.parameters == sum(
        p.numel() for p in VisionLanguageModels(compute=ComputeDevice(device="cpu")).load(folder)[0].parameters()
    )
    assert 0 < report.required_bytes < report.available_bytes
    model, processor = VisionLanguageModels(compute=ComputeDevice(device="cpu")).load(folder)
    preflight.model_runs_without_image(model, processor)


def test_missing_or_pickled_weights(tmp_path: Path, tiny_llava_dir: Path) -> None:
    with pytest.raises(PreflightError, match="has no config.json; give a save_pretrained folder"):
        preflight.checkpoint_files(tmp_path)
    folder = copy_of(tiny_llava_dir, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(PreflightError, match=r"no \*.safetensors weights \(found pickled weights .*pytorch_model.bin"):
        preflight.checkpoint_files(folder)


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
        "{% if part['type'] == 'image' %}<image>\n{% elif", "{% if false %}{% elif"
    )
    with pytest.raises(
        PreflightError, match="without an image still contains the image token '<image>': the chat template inserts"
    ):
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
