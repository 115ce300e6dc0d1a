"""A folder of good images and every kind of bad input, written on disk, with what intake must make of each file:
admitted, or rejected with a reason code. Shared by the intake tests and the run through Dagster."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from si_assets.collection.validation import InputLimits, Reason

# Small limits, so that the too-large and too-many-pixels files stay small on disk.
LIMITS = {"max_pixels": 1_000_000, "max_file_bytes": 200_000}
ADMITTED = "admitted"


def noise(size: tuple[int, int] = (24, 24), seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def encoded(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def with_jpeg_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same JPEG (same scan, same pixels) with a COM segment after its start marker: other bytes."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def sideways_jpeg() -> bytes:
    """A 32x16 JPEG whose EXIF orientation (6: rotate 90 degrees clockwise) makes it 16 wide, 32 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(noise((32, 16), seed=5), "JPEG", quality=95, exif=exif.tobytes())


def upright_pixels(data: bytes) -> np.ndarray:
    """What a viewer shows, decoded here independently of the code under test."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


@dataclass
class Corpus:
    root: Path
    expected: dict[str, str] = field(default_factory=dict)  # path as stored -> reason code, or ADMITTED
    good: dict[str, bytes] = field(default_factory=dict)  # admitted path -> its file's bytes
    skipped: list[str] = field(default_factory=list)  # kinds this file system cannot hold

    def write(self, name: str | bytes, data: bytes, expect: str) -> Path:
        path = self.root / os.fsdecode(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.expect(name, expect)
        if expect == ADMITTED:
            self.good[shown(name)] = data
        return path

    def expect(self, name: str | bytes, reason: str) -> None:
        key = shown(name)
        assert key not in self.expected, f"{key} twice in the corpus"
        self.expected[key] = reason

    def link(self, name: str, target: str | Path, expect: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
        self.expect(name, expect)

    def kinds(self) -> set[str]:
        return set(self.expected.values()) - {ADMITTED}


def shown(name: str | bytes) -> str:
    """How the rejects table and the pool's ids show a name: bytes that are not UTF-8 as `\\xNN`."""
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    return raw.decode("utf-8", "backslashreplace")


def deny(monkeypatch: pytest.MonkeyPatch, paths: list[Path]) -> None:
    """Takes read permission from `paths`. Root reads whatever the mode says, so as root opening or listing them
    is made to fail the way it fails for everyone else (EACCES), at the two calls intake makes."""
    for path in paths:
        path.chmod(0)
    if os.geteuid() != 0:
        return
    denied = {os.fsencode(p) for p in paths}

    def guarded(call: Callable) -> Callable:
        def wrapper(path, *args, **kwargs):
            if isinstance(path, str | bytes | os.PathLike) and os.fsencode(path) in denied:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return call(path, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "open", guarded(os.open))
    monkeypatch.setattr(os, "scandir", guarded(os.scandir))


def build_corpus(root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    """Every kind of file intake meets in a folder, each with the outcome it must get. Directory names sort the
    originals ("1_good") before their copies ("2_copies"), so the copies are the duplicates."""
    corpus = Corpus(root)
    root.mkdir(parents=True)
    w = corpus.write
    a, b = encoded(noise(seed=1)), encoded(noise(seed=2), "JPEG", quality=90)
    sideways = sideways_jpeg()

    # admitted: formats, a converted mode, an EXIF-rotated photo, a non-ASCII name
    w("1_good/a.png", a, ADMITTED)
    w("1_good/b.jpg", b, ADMITTED)
    w("1_good/c.bmp", encoded(noise(seed=3), "BMP"), ADMITTED)
    w("1_good/d.webp", encoded(noise(seed=4), "WEBP", lossless=True), ADMITTED)
    w("1_good/grey.png", encoded(noise(seed=6).convert("L")), ADMITTED)
    w("1_good/sideways.jpg", sideways, ADMITTED)
    w("1_good/café.png", encoded(noise(seed=7)), ADMITTED)

    # duplicates: the same decoded pixels, whatever the bytes
    w("2_copies/a_copy.png", a, Reason.DUPLICATE)
    w("2_copies/a_resaved.png", encoded(Image.open(io.BytesIO(a)), compress_level=1), Reason.DUPLICATE)
    w("2_copies/b_comment.jpg", with_jpeg_comment(b, b"exported again"), Reason.DUPLICATE)
    w("2_copies/b_pixels.png", encoded(Image.fromarray(upright_pixels(b))), Reason.DUPLICATE)
    w("2_copies/sideways_upright.png", encoded(Image.fromarray(upright_pixels(sideways))), Reason.DUPLICATE)

    # files that are no usable image
    w("bad/empty.png", b"", Reason.ZERO_BYTES)
    w("bad/cut.png", encoded(noise((64, 64), seed=8))[:300], Reason.TRUNCATED)
    w("bad/cut.jpg", encoded(noise((64, 64), seed=9), "JPEG")[:300], Reason.TRUNCATED)
    w("bad/page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", Reason.NOT_AN_IMAGE)
    w("bad/huge.png", encoded(Image.new("RGB", (1100, 1000), "white")), Reason.TOO_MANY_PIXELS)
    w("bad/deep.png", encoded(noise(seed=10).convert("I;16")), Reason.UNSUPPORTED_MODE)
    w("bad/tiny.png", encoded(noise((4, 30), seed=11)), Reason.TOO_SMALL)
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    w("bad/anim.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), Reason.MULTI_FRAME)
    w("bad/big.png", encoded(noise(seed=12)) + bytes(LIMITS["max_file_bytes"]), Reason.TOO_LARGE)
    w("bad/photo.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", Reason.UNSUPPORTED_FORMAT)
    w("bad/scan.jxl", b"\xff\x0a\xfa", Reason.UNSUPPORTED_FORMAT)
    w("bad/README", b"images for the next round", Reason.UNSUPPORTED_FORMAT)

    # operating system files and uploads in flight: rejected, not counted
    w("._a.png", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X", Reason.SYSTEM_FILE)
    w(".DS_Store", b"\x00\x00\x00\x01Bud1", Reason.SYSTEM_FILE)
    w("Thumbs.db", b"\xd0\xcf\x11\xe0", Reason.SYSTEM_FILE)
    w("incoming/upload.jpg.part", b[:100], Reason.IN_FLIGHT)
    w("incoming/photo.png.crdownload", a[:100], Reason.IN_FLIGHT)
    w("incoming/.photo.jpg.a1B2c3", b[:100], Reason.IN_FLIGHT)  # rsync's temporary name
    w("incoming/scratch.tmp", b"", Reason.IN_FLIGHT)

    # links and special files
    corpus.link("links/dangling.png", "nowhere.png", Reason.BROKEN_LINK)
    corpus.link("links/loop.png", "loop.png", Reason.BROKEN_LINK)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(encoded(noise(seed=13)))
    corpus.link("links/escape.png", outside / "secret.png", Reason.OUTSIDE_ROOT)
    corpus.link("links/folder", outside, Reason.NOT_A_FILE)
    corpus.link("links/inside.png", "../1_good/a.png", Reason.DUPLICATE)
    if hasattr(os, "mkfifo"):
        (root / "special").mkdir()
        os.mkfifo(root / "special/pipe.png")  # reading it would wait forever for a writer
        corpus.expect("special/pipe.png", Reason.NOT_A_FILE)

    # no permission to read a file, or to list a folder (whose files are then never seen)
    locked = w("locked/secret.png", encoded(noise(seed=14)), Reason.UNREADABLE)
    (root / "locked_dir").mkdir()
    (root / "locked_dir/unseen.png").write_bytes(encoded(noise(seed=15)))
    corpus.expect("locked_dir", Reason.UNREADABLE)
    deny(monkeypatch, [locked, root / "locked_dir"])  # given back by `restore_permissions`

    # names that are not UTF-8, where the file system holds them (most Linux ones do; APFS does not)
    for name, data, reason in (
        (b"1_good/caf\xe9.png", encoded(noise(seed=16)), ADMITTED),
        (b"bad/broken\xff.jpg", b"not a picture at all", Reason.NOT_AN_IMAGE),
    ):
        try:
            w(name, data, reason)
        except OSError:
            corpus.skipped.append(f"{shown(name)}: the file system refuses names that are not UTF-8")
    return corpus


def restore_permissions(root: Path) -> None:
    """So that the temporary folder can be deleted."""
    for path in (root / "locked/secret.png", root / "locked_dir"):
        if path.exists():
            path.chmod(0o755)


def build_limits(**changes: object) -> InputLimits:
    return InputLimits(**LIMITS, **changes)
