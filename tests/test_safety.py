"""Determinism and safe defaults: the same config and seed give bit-identical pairs on CPU; no remote code,
no pickled weights, the UI on localhost, store paths confined to the store root."""

from pathlib import Path

import polars as pl
import pytest
import torch

from resources import ComputeDevice, VisionLanguageModels
from si_assets.bootstrap.clip import TinyClipSpec, build_tiny_clip
from si_assets.organization.verification import PairRule, clip_score_fn, organize_pairs, score_responses
from si_assets.storage import ArtifactStore
from si_assets.verifier.clip import ClipScorer, load_clip, save_clip
from tests import resume_worker

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_same_config_and_seed_give_bit_identical_pairs(tmp_path: Path, tiny_llava_dir: Path) -> None:
    torch.manual_seed(0)
    spec = TinyClipSpec()
    save_clip(build_tiny_clip(spec), spec.open_clip_config(), tmp_path / "clip")
    _, image_by_id = resume_worker.plan()
    ids = sorted(image_by_id)

    def pairs_from_scratch(run: int):
        responses, _ = resume_worker.run(tiny_llava_dir, tmp_path / f"store-{run}")  # nothing cached
        scorer = ClipScorer(*load_clip(str(tmp_path / "clip")), batch_size=5)
        score = clip_score_fn(scorer, image_by_id, ids, "sentence_mean")
        return organize_pairs(score_responses(responses, score), PairRule.plain(margin=0.001), score)

    first, second = pairs_from_scratch(1), pairs_from_scratch(2)
    assert first.height == len(ids)
    assert first.equals(second)  # every text, score and decision, to the bit


def test_models_load_only_safetensors_and_no_remote_code(tmp_path: Path, tiny_llava_dir: Path) -> None:
    models = VisionLanguageModels(compute=ComputeDevice(device="cpu"))
    assert models.trust_remote_code is False
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for file in tiny_llava_dir.iterdir():
        if file.suffix != ".safetensors":
            (pickled / file.name).write_bytes(file.read_bytes())
    model, _ = models.load(tiny_llava_dir)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the same weights, as a pickle
    with pytest.raises(OSError, match="safetensors"):
        models.load(pickled)


def test_ui_binds_to_localhost_and_store_paths_stay_inside_the_root(tmp_path: Path) -> None:
    ui = next(line for line in (REPO / "Makefile").read_text().splitlines() if "dagster dev" in line)
    assert "-h 127.0.0.1" in ui
    store = ArtifactStore(tmp_path / "store")
    for escaping in ("../outside", "/etc/passwd", "a//b", "memo/../../x"):
        with pytest.raises(ValueError, match="escapes the root"):
            store.write_bytes(escaping, b"x")
        with pytest.raises(ValueError, match="escapes the root"):
            store.read_pointer(escaping)
    with pytest.raises(ValueError, match="escapes the root"):
        store.put_table(pl.DataFrame({"a": [1]}), "pairs", "../round")
    assert not (tmp_path / "outside").exists()
