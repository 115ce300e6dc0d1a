"""Drawing the world's objects: exact shapes on a cluttered, noisy background."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from si_assets.world.spec import WorldSpec


@dataclass(frozen=True)
class PlacedObject:
    kind: str
    colour: str
    cx: float
    cy: float
    size: float
    contrast: float


def _regular_polygon(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(phase + 2 * math.pi * i / n), cy + r * math.sin(phase + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        ang = -math.pi / 2 + math.pi * i / 5
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def draw_mask(kind: str, cx: float, cy: float, size: float, image_size: int) -> Image.Image:
    """A binary 'L' mask of one object. Unknown kinds fall back to a regular polygon whose
    corner count is derived from the name, so user-configured kinds still render distinctly."""
    mask = Image.new("L", (image_size, image_size), 0)
    d = ImageDraw.Draw(mask)
    r = size / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        d.ellipse(box, fill=255)
    elif kind == "square":
        d.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=255)
    elif kind == "triangle":
        d.polygon(_regular_polygon(cx, cy + r * 0.15, r, 3, -math.pi / 2), fill=255)
    elif kind == "star":
        d.polygon(_star(cx, cy, r), fill=255)
    elif kind == "cross":
        w = max(1.0, r * 0.35)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    elif kind == "ring":
        d.ellipse(box, outline=255, width=max(1, int(round(r * 0.35))))
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=255)
    elif kind == "hexagon":
        d.polygon(_regular_polygon(cx, cy, r, 6, 0.0), fill=255)
    else:
        n = 5 + sum(map(ord, kind)) % 4
        d.polygon(_regular_polygon(cx, cy, r, n, 0.3), fill=255)
    return mask


def render_image(objects: list[PlacedObject], spec: WorldSpec, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 image: a tinted gradient background, distractor strokes, the objects blended in with
    their contrast, then pixel noise. Low contrast, small size and clutter make perception hard."""
    s = spec.image_size
    base = rng.uniform(80, 175, size=3)
    gradient = rng.uniform(-25, 25, size=(2, 3))
    yy, xx = np.mgrid[0:s, 0:s] / max(1, s - 1)
    img = base + xx[..., None] * gradient[0] + yy[..., None] * gradient[1]

    clutter = Image.new("L", (s, s), 0)
    cd = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(0, spec.clutter + 1))):
        x0, y0, x1, y1 = rng.uniform(0, s, size=4)
        cd.line((x0, y0, x1, y1), fill=255, width=1)
    clutter_colour = rng.uniform(40, 220, size=3)
    alpha = np.asarray(clutter, dtype=np.float64)[..., None] / 255 * 0.5
    img = img * (1 - alpha) + clutter_colour * alpha

    for obj in objects:
        colour = np.asarray(spec.colours[obj.colour], dtype=np.float64)
        alpha = np.asarray(draw_mask(obj.kind, obj.cx, obj.cy, obj.size, s), dtype=np.float64)[..., None] / 255
        img = img * (1 - alpha * obj.contrast) + colour * alpha * obj.contrast

    if spec.pixel_noise > 0:
        img = img + rng.normal(0, spec.pixel_noise, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
