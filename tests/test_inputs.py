"""Bad input gets a reason code and loses nothing: one test per kind, with the files written here."""

import io
import os
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from resources import ArtifactStoreResource, ComputeDevice, VisionLanguageModels
from si_assets.assets.collection import ImagePoolConfig, unlabeled_images
from si_assets.collection.images import build_pool, folder_entries, image_files, manifest_entries, world_pool
from si_assets.collection.validation import REASON_HELP, InputLimits, Reason
from si_assets.storage import ArtifactStore, Checkpoint
from si_assets.world import WorldSpec, generate_split

PROMPTS = ["Describe the image.", "List the objects you see."]
LIMITS = InputLimits(max_pixels=1_000_000, min_side=8, max_prompt_tokens=5)


def count_words(text: str) -> int:
    return len(text.split())


def image_bytes(size=(24, 24), mode: str = "RGB", fmt: str = "PNG", seed: int = 0, **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def rejected(root: Path, files: dict[str, bytes], prompt: str | None = None, **limits) -> list[tuple[str, str]]:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    pool = build_pool(folder_entries(root), root, [prompt] if prompt else PROMPTS, InputLimits(**limits), count_words)
    return [(p, r) for p, r, _ in pool.rejects.rows()]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.png", b"", Reason.ZERO_BYTES),
        ("cut.png", image_bytes(size=(64, 64))[:300], Reason.TRUNCATED),
        ("cut.jpg", image_bytes(size=(64, 64), fmt="JPEG")[:300], Reason.TRUNCATED),
        ("text.png", b"this is not a png at all", Reason.NOT_AN_IMAGE),
        ("huge.png", image_bytes(size=(1200, 1000)), Reason.TOO_MANY_PIXELS),
        ("deep.png", image_bytes(mode="I;16"), Reason.UNSUPPORTED_MODE),
        ("tiny.png", image_bytes(size=(4, 30)), Reason.TOO_SMALL),
    ],
)
def test_each_bad_image_gets_its_reason(tmp_path: Path, name: str, data: bytes, reason: Reason) -> None:
    good = {"good.png": image_bytes(seed=1)}
    assert rejected(tmp_path, {**good, name: data}, max_pixels=1_000_000) == [(name, str(reason))]


def test_animated_images_are_rejected(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert rejected(tmp_path, {"anim.gif": buf.getvalue()}) == [("anim.gif", Reason.MULTI_FRAME)]


def test_convertible_modes_are_converted_not_rejected(tmp_path: Path) -> None:
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    palette.paste(1, (0, 0, 8, 16))  # left half colour 1 (blue), right half colour 0 (red, transparent)
    buf = io.BytesIO()
    palette.save(buf, format="PNG", transparency=0)
    files = {
        "cmyk.jpg": image_bytes(mode="CMYK", fmt="JPEG"),
        "grey.png": image_bytes(mode="L"),
        "alpha.png": image_bytes(mode="RGBA"),
        "palette.png": buf.getvalue(),
    }
    assert rejected(tmp_path, files) == []
    pool = build_pool(folder_entries(tmp_path), tmp_path, PROMPTS)
    converted = Image.open(io.BytesIO(pool.images.filter(pl.col("id") == "palette.png")["image_png"][0]))
    assert converted.mode == "RGB"
    assert converted.getpixel((2, 2)) == (0, 0, 255) and converted.getpixel((12, 2)) == (255, 255, 255)  # on white


def test_duplicates_are_found_by_content(tmp_path: Path) -> None:
    same = image_bytes(seed=3)
    assert rejected(tmp_path, {"a.png": same, "b/copy.png": same}) == [("b/copy.png", Reason.DUPLICATE)]


def test_prompts_are_checked(tmp_path: Path) -> None:
    assert rejected(tmp_path, {"a.png": image_bytes()}, prompt="one two three four five six", max_prompt_tokens=5) == [
        ("a.png", Reason.PROMPT_TOO_LONG)
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "prompt": "   "}\n')
    pool = build_pool(manifest_entries(manifest), tmp_path, PROMPTS, LIMITS, count_words)
    assert pool.rejects.rows() == [("a.png", Reason.EMPTY_PROMPT, "'   '")]
    with pytest.raises(ValueError, match="non-empty strings"):
        build_pool([], tmp_path, [" "])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_paths_missing_or_outside_the_root(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(image_bytes(seed=5))
    (tmp_path / "secret.png").write_bytes(image_bytes(seed=6))
    os.symlink(tmp_path / "secret.png", root / "link.png")
    paths = ["ok.png", "gone.png", "../secret.png", str(tmp_path / "secret.png"), "link.png"]
    manifest = tmp_path / f"manifest{suffix}"
    table = pl.DataFrame({"path": paths, "prompt": ["What is this?"] * 5})
    {".csv": table.write_csv, ".jsonl": table.write_ndjson, ".parquet": table.write_parquet}[suffix](manifest)
    pool = build_pool(manifest_entries(manifest), root, PROMPTS, LIMITS, count_words)
    assert pool.images["id"].to_list() == ["ok.png"] and pool.images["prompt"].to_list() == ["What is this?"]
    assert [(p, r) for p, r, _ in pool.rejects.rows()] == [
        ("gone.png", Reason.MISSING_FILE),
        ("../secret.png", Reason.OUTSIDE_ROOT),
        (str(tmp_path / "secret.png"), Reason.OUTSIDE_ROOT),
        ("link.png", Reason.OUTSIDE_ROOT),
    ]
    assert pool.reject_rate == pytest.approx(4 / 5)
    assert pool.reject_counts() == {"missing_file": 1, "outside_root": 3}


def test_bad_manifests_and_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use one of"):
        manifest_entries(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        manifest_entries(tmp_path / "list.csv")
    (tmp_path / "list.csv").write_text("file,prompt\na.png,hi\n")
    with pytest.raises(ValueError, match="no `path` column"):
        manifest_entries(tmp_path / "list.csv")
    with pytest.raises(NotADirectoryError, match="does not exist"):
        image_files(tmp_path / "missing")


def test_every_reason_is_documented() -> None:
    assert set(REASON_HELP) == set(Reason)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"`{reason}`" in readme for reason in Reason)


def test_the_world_passes_the_same_checks() -> None:
    world = generate_split(
        WorldSpec(seed=7, splits={"seed_train": 2, "clip_train": 2, "improve": 20, "dev": 2, "test": 2}), "improve"
    )
    pool = world_pool(world, InputLimits(), count_words)
    assert pool.rejects.height == 0 and pool.images["id"].to_list() == world["id"].to_list()
    assert pool.images["image_sha256"].to_list() == world["image_sha256"].to_list()


def test_unlabeled_images_stores_rejects_and_blocks_on_their_rate(tmp_path: Path, tiny_llava_dir: Path) -> None:
    root = tmp_path / "inbox"
    root.mkdir()
    (root / "a.png").write_bytes(image_bytes(seed=1))
    (root / "b.jpg").write_bytes(image_bytes(seed=2, fmt="JPEG"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    context = dg.build_asset_context(partition_key="round-0001")
    models = VisionLanguageModels(compute=ComputeDevice(device="cpu"))
    store = ArtifactStoreResource(root=str(tmp_path / "store"))
    config = ImagePoolConfig(source="folder", folder=str(root), max_reject_rate=0.2)
    output, check = list(unlabeled_images(context, config, models, store, Checkpoint(tiny_llava_dir), pl.DataFrame()))
    assert output.value["id"].to_list() == ["a.png", "b.jpg"]
    assert output.metadata["rejects/not_an_image"].value == 1
    stored = ArtifactStore(tmp_path / "store").head("unlabeled_images_rejects", "round-0001")
    assert ArtifactStore(tmp_path / "store").read_table(stored)["path"].to_list() == ["broken.jpg"]
    assert check.check_name == "reject_rate" and not check.passed  # 1 of 3 > 20%
    for bad, message in (
        ({"source": "folder"}, "needs `folder`"),
        ({"source": "manifest", "folder": str(root)}, "needs `manifest`"),
    ):
        with pytest.raises(ValueError, match=message):  # refused as config, before any image is read
            ImagePoolConfig(**bad)
    (root / "a.png").unlink()
    (root / "b.jpg").unlink()
    with pytest.raises(dg.Failure, match="no usable image"):
        list(unlabeled_images(context, config, models, store, Checkpoint(tiny_llava_dir), pl.DataFrame()))
