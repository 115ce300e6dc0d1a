"""Bad input gets a reason code and loses nothing: one test per kind, with the files written here, and a folder
holding every kind at once (`tests/input_corpus.py`)."""

import hashlib
import io
import os
import re
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image
from transformers import AutoProcessor

from resources import ArtifactStoreResource, ComputeDevice, VisionLanguageModels
from si_assets.assets.collection import ImagePoolConfig, unlabeled_images
from si_assets.collection import validation
from si_assets.collection.images import (
    ImagePoolSettings,
    build_pool,
    folder_entries,
    image_files,
    manifest_entries,
    round_slice,
    world_pool,
)
from si_assets.collection.validation import NOT_COUNTED, REASON_HELP, InputLimits, Reason
from si_assets.rounds import round_key
from si_assets.rounds.steps import admit_images
from si_assets.storage import ArtifactStore, Checkpoint
from si_assets.world import WorldSpec, generate_split
from tests.input_corpus import (
    ADMITTED,
    build_corpus,
    build_limits,
    encoded,
    noise,
    restore_permissions,
    shown,
    sideways_jpeg,
    upright_pixels,
    with_jpeg_comment,
)

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


def test_every_reason_is_documented_with_whether_it_counts() -> None:
    assert set(REASON_HELP) == set(Reason)
    method = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    rows = set(re.findall(r"^\| [^|]+ \| `(\w+)` \| (yes|no) \|$", method, flags=re.MULTILINE))
    assert {code for code, _ in rows} == {str(r) for r in Reason}, "docs/method.md's bad-input table names each reason"
    assert len(rows) == len(Reason), "a reason documented as both counted and not"
    assert {code for code, counts in rows if counts == "no"} == {str(r) for r in NOT_COUNTED}


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
    assert output.metadata["source"].value == str(root)
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


def test_every_file_of_a_bad_folder_ends_up_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder with good images and every kind of bad input: each file is admitted or rejected with the reason
    it deserves, exactly once; the good images come out whole; nothing raises; the tables write to Parquet."""
    corpus = build_corpus(tmp_path / "inbox", tmp_path / "elsewhere", monkeypatch)
    # Two kinds happen between listing the folder and reading a file: a file removed, a file still being written.
    corpus.write("bad/vanished.png", encoded(noise(seed=20)), Reason.MISSING_FILE)
    growing = corpus.write("bad/growing.png", encoded(noise(seed=21)), Reason.IN_FLIGHT)
    try:
        entries = folder_entries(corpus.root)
        (corpus.root / "bad/vanished.png").unlink()
        read, growing_inode = validation.read_limited, growing.stat().st_ino

        def read_while_written(fd: int, limit: int) -> bytes:
            data = read(fd, limit)
            if os.fstat(fd).st_ino == growing_inode:  # the uploader appends while intake reads
                with growing.open("ab") as upload:
                    upload.write(b"\0" * 1000)
            return data

        monkeypatch.setattr(validation, "read_limited", read_while_written)
        pool = build_pool(entries, corpus.root, PROMPTS, build_limits(), count_words)
    finally:
        restore_permissions(corpus.root)

    rows = pool.rejects.rows(named=True)
    ids = pool.images["id"].to_list()
    every = ids + [row["path"] for row in rows]
    assert len(every) == len(set(every)), "a file ended up twice"
    assert {**{r["path"]: r["reason"] for r in rows}, **dict.fromkeys(ids, ADMITTED)} == corpus.expected
    bad = [name for name, outcome in corpus.expected.items() if outcome != ADMITTED]
    assert len(bad) >= 30 and corpus.kinds() == set(Reason) - {Reason.EMPTY_PROMPT, Reason.PROMPT_TOO_LONG}
    assert len(corpus.good) == 8 - sum("1_good" in skipped for skipped in corpus.skipped)

    # the good images, whole: each with its file's hash and the pixels a viewer shows
    assert sorted(ids) == sorted(corpus.good) and pool.images.height == len(corpus.good)
    for name, sha, png in pool.images.select("id", "image_sha256", "image_png").iter_rows():
        assert sha == hashlib.sha256(corpus.good[name]).hexdigest()
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), upright_pixels(corpus.good[name]))
    sideways = pool.images.filter(pl.col("id") == "1_good/sideways.jpg")["image_png"][0]
    assert Image.open(io.BytesIO(sideways)).size == (16, 32)  # stored 32x16, turned upright by its EXIF tag

    failed = sum(outcome not in NOT_COUNTED | {ADMITTED} for outcome in corpus.expected.values())
    assert pool.failures.height == failed
    assert pool.reject_rate == pytest.approx(failed / (failed + len(corpus.good)))
    details = {r["path"]: r["detail"] for r in rows}
    assert "cannot identify image file 'bad/page.jpg'" in details["bad/page.jpg"]
    assert "<!DOCTYPE" in details["bad/page.jpg"] and "BytesIO" not in " ".join(details.values())
    assert "same pixels as 1_good/sideways.jpg" in details["2_copies/sideways_upright.png"]
    assert "same bytes as 1_good/a.png" in details["links/inside.png"]
    assert "changed while read" in details["bad/growing.png"]
    for table in (pool.images, pool.rejects):  # names that are not UTF-8 included
        table.write_parquet(tmp_path / "table.parquet")
        assert pl.read_parquet(tmp_path / "table.parquet").equals(table)

    # a manifest over the same folder: the prompt kinds, a path named twice, paths that lead nowhere
    manifest = pl.DataFrame(
        {
            "path": ["1_good/a.png", "1_good/a.png", "1_good/b.jpg", "1_good/c.bmp", "gone.png", "../elsewhere/x"],
            "prompt": ["Describe it.", "Again.", "   ", "one two three four five six", "Hi.", "Hi."],
        }
    )
    manifest.write_parquet(tmp_path / "manifest.parquet")
    listed = build_pool(manifest_entries(tmp_path / "manifest.parquet"), corpus.root, PROMPTS, LIMITS, count_words)
    assert listed.images["id"].to_list() == ["1_good/a.png"]
    assert [(p, r) for p, r, _ in listed.rejects.rows()] == [
        ("1_good/a.png", Reason.DUPLICATE),
        ("1_good/b.jpg", Reason.EMPTY_PROMPT),
        ("1_good/c.bmp", Reason.PROMPT_TOO_LONG),
        ("gone.png", Reason.MISSING_FILE),
        ("../elsewhere/x", Reason.OUTSIDE_ROOT),
    ]


def test_the_inbox_listing_skips_what_a_round_would_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new-images sensor's listing: the images a round reads, never temporary, system or unsupported files,
    and no error for links to nowhere."""
    corpus = build_corpus(tmp_path / "inbox", tmp_path / "elsewhere", monkeypatch)
    try:
        listed = image_files(corpus.root)
    finally:
        restore_permissions(corpus.root)
    unread = {Reason.SYSTEM_FILE, Reason.IN_FLIGHT, Reason.UNSUPPORTED_FORMAT, Reason.BROKEN_LINK, Reason.NOT_A_FILE}
    assert set(listed) == {n for n, outcome in corpus.expected.items() if outcome not in unread} - {"locked_dir"}
    assert listed["1_good/a.png"] == (corpus.root / "1_good/a.png").stat().st_size


def test_duplicates_are_the_same_decoded_pixels(tmp_path: Path) -> None:
    """Exact pixels after orientation: other bytes with the same picture are duplicates; a re-encoded JPEG (other
    pixels) and an image one pixel apart are not."""
    original = noise((32, 32), seed=1)
    jpeg = encoded(original, "JPEG", quality=90)
    changed = np.asarray(original).copy()
    changed[0, 0] = 255 - changed[0, 0]
    files = {
        "a.jpg": jpeg,
        "b_comment.jpg": with_jpeg_comment(jpeg, b"copied"),
        "c_pixels.png": encoded(Image.fromarray(upright_pixels(jpeg))),
        "d_requality.jpg": encoded(original, "JPEG", quality=60),
        "e_one_pixel.png": encoded(Image.fromarray(changed)),
        "f_sideways.jpg": sideways_jpeg(),
        "g_upright.bmp": encoded(Image.fromarray(upright_pixels(sideways_jpeg())), "BMP"),
    }
    assert rejected(tmp_path, files) == [("b_comment.jpg", Reason.DUPLICATE), ("c_pixels.png", Reason.DUPLICATE)] + [
        ("g_upright.bmp", Reason.DUPLICATE)
    ]


def test_the_size_cap_is_read_from_the_file_system_before_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "big.png").write_bytes(encoded(noise()) + bytes(5000))
    (tmp_path / "ok.png").write_bytes(encoded(noise(seed=1)))
    reads = []
    read = validation.read_limited
    monkeypatch.setattr(validation, "read_limited", lambda fd, limit: reads.append(fd) or read(fd, limit))
    pool = build_pool(folder_entries(tmp_path), tmp_path, PROMPTS, InputLimits(max_file_bytes=4000))
    assert pool.images["id"].to_list() == ["ok.png"] and len(reads) == 1  # big.png was never read
    assert pool.rejects.rows()[0][:2] == ("big.png", Reason.TOO_LARGE)
    assert "> max_file_bytes 4,000" in pool.rejects.rows()[0][2]
    for bad in (0, 2_000_000_001):
        with pytest.raises(ValueError, match="max_file_bytes"):
            InputLimits(max_file_bytes=bad)


def test_unreadable_files_with_real_permissions(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode (the corpus test makes opening them fail instead)")
    (tmp_path / "ok.png").write_bytes(encoded(noise(seed=1)))
    (tmp_path / "locked.png").write_bytes(encoded(noise(seed=2)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/unseen.png").write_bytes(encoded(noise(seed=3)))
    (tmp_path / "locked.png").chmod(0)
    (tmp_path / "sub").chmod(0)
    try:
        assert rejected(tmp_path, {}) == [("locked.png", Reason.UNREADABLE), ("sub", Reason.UNREADABLE)]
    finally:
        (tmp_path / "sub").chmod(0o755)


def test_names_that_are_not_utf8_are_stored_printable(tmp_path: Path) -> None:
    name = b"caf\xe9.png"
    try:
        (tmp_path / os.fsdecode(name)).write_bytes(encoded(noise(seed=1)))
        (tmp_path / os.fsdecode(b"bad\xff.png")).write_bytes(b"no picture")
    except OSError as exc:
        pytest.skip(f"this file system refuses names that are not UTF-8: {exc}")
    pool = build_pool(folder_entries(tmp_path), tmp_path, PROMPTS)
    assert pool.images["id"].to_list() == [shown(name)] == ["caf\\xe9.png"]
    assert pool.rejects.rows()[0][:2] == ("bad\\xff.png", Reason.NOT_AN_IMAGE)
    assert "cannot identify image file 'bad\\xff.png'" in pool.rejects.rows()[0][2]
    pool.rejects.write_parquet(tmp_path / "rejects.parquet")
    pool.images.write_parquet(tmp_path / "images.parquet")
    assert image_files(tmp_path) == {"bad\\xff.png": 10, "caf\\xe9.png": len(encoded(noise(seed=1)))}


def test_a_folder_or_manifest_names_the_source_read() -> None:
    assert ImagePoolSettings().source == "world" and ImagePoolSettings().described() == "world:improve"
    assert ImagePoolSettings(folder="/data").source == "folder"
    assert ImagePoolSettings(folder="/data").described() == "/data"
    listed = ImagePoolSettings(folder="/data", manifest="/data/m.csv")
    assert listed.source == "manifest" and listed.described() == "/data/m.csv"
    assert ImagePoolConfig(folder="/data").source == "folder"  # the Dagster config, with Dagster's defaults
    for bad, message in (
        ({"source": "world", "folder": "/data"}, "source 'world' reads the embedded world"),
        ({"source": "folder", "folder": "/data", "manifest": "/m.csv"}, "set source: manifest"),
        ({"manifest": "/m.csv"}, "needs `folder`"),
    ):
        with pytest.raises(ValueError, match=message):
            ImagePoolSettings(**bad)


def test_whatever_the_decoder_raises_is_one_files_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile bytes can trip a decoder in ways no list of exceptions foresees; a malformed EXIF block leaves the
    pixels as stored, as viewers do."""
    data = encoded(noise(seed=1))

    def tripped(image: Image.Image, limits: InputLimits) -> np.ndarray:
        raise IndexError("tile index out of range")

    monkeypatch.setattr(validation, "_checked_pixels", tripped)
    with pytest.raises(validation.Rejected) as failure:
        validation.decode_image(data, InputLimits(), "x.png")
    assert failure.value.reason is Reason.NOT_AN_IMAGE
    assert failure.value.detail == "Pillow failed on 'x.png': IndexError: tile index out of range"
    monkeypatch.undo()

    def unreadable_exif(image: Image.Image) -> Image.Image:
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(validation.ImageOps, "exif_transpose", unreadable_exif)
    np.testing.assert_array_equal(validation.decode_image(data, InputLimits()), np.asarray(noise(seed=1)))


def test_each_round_reads_its_own_slice_wrapping_around() -> None:
    entries = list(range(10))
    assert round_slice(entries, None, 3) == entries
    assert [round_slice(entries, 4, k) for k in (1, 2, 3, 4)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 0, 1],
        [2, 3, 4, 5],
    ]
    assert sorted(round_slice(entries, 25, 2)) == entries, "a slice larger than the pool reads each entry once"
    assert round_slice([], 4, 1) == []
    with pytest.raises(ValueError, match="images_per_round"):
        ImagePoolSettings(images_per_round=0)


def test_a_larger_improve_split_keeps_its_first_images() -> None:
    """Each image has its own child seed, so a bigger pool for per-round slices leaves round 1's images as they were."""
    splits = {"seed_train": 2, "clip_train": 2, "improve": 6, "dev": 2, "test": 2}
    small = generate_split(WorldSpec(seed=7, splits=splits), "improve")
    large = generate_split(WorldSpec(seed=7, splits={**splits, "improve": 15}), "improve")
    assert large.head(6)["image_sha256"].to_list() == small["image_sha256"].to_list()


@pytest.mark.parametrize("source", ["world", "folder"])
def test_admitted_images_are_the_rounds_slice(tmp_path: Path, tiny_llava_dir: Path, source: str) -> None:
    world = generate_split(
        WorldSpec(seed=7, splits={"seed_train": 2, "clip_train": 2, "improve": 10, "dev": 2, "test": 2}), "improve"
    )
    settings: dict = {"images_per_round": 4}
    if source == "folder":
        for image_id, png in zip(world["id"], world["image_png"]):
            (tmp_path / f"{image_id}.png").write_bytes(png)
        settings["folder"] = str(tmp_path)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    pools = [admit_images(ImagePoolSettings(**settings), processor, world, round_key(k)).images for k in (1, 2, 3)]
    hashes = world["image_sha256"].to_list()
    assert [p["image_sha256"].to_list() for p in pools] == [hashes[0:4], hashes[4:8], hashes[8:10] + hashes[0:2]]
