"""Region support: where in the image CLIP finds each named object.

A whole-image CLIP score reads a caption in context, so an object that usually comes with one in the picture (a
fork beside a knife) scores as if it were there. Region support asks about one object at a time, in one part of the
image at a time: each window of a sliding grid is shown alone (the rest filled with the image's median colour, so
objects keep the scale the CLIP saw in training, which a crop scaled up would not), CLIP classifies the window among
the phrases of all responses, and an object's support is the largest share of the window's probability that the
phrases naming it take, over the windows. Judge-free: the same CLIP, and the phrases are the model's own words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from si_assets.verifier.clip import ClipScorer

Box = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive)


def sliding_boxes(width: int, height: int, window: float = 1 / 3) -> list[Box]:
    """Square windows of `window` × the shorter side, at a stride of half a window, the last one flush with the
    right and bottom edges, so every pixel lies in a window."""
    if not 0 < window <= 1:
        raise ValueError(f"window={window} must be a share of the image side in (0, 1]")
    side = max(1, round(min(width, height) * window))
    stride = max(1, side // 2)

    def starts(extent: int) -> list[int]:
        points = list(range(0, extent - side + 1, stride))
        return points if points[-1] == extent - side else [*points, extent - side]

    return [(x, y, x + side, y + side) for y in starts(height) for x in starts(width)]


def centred_box(box: Sequence[float], side: int, width: int, height: int) -> Box:
    """The `side`-pixel window around the centre of `box` (left, top, right, bottom), clipped to the image."""
    x, y, half = round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2), side // 2
    return max(0, x - half), max(0, y - half), min(width, x + half), min(height, y + half)


def masked_view(image: Image.Image, box: Box) -> Image.Image:
    """`image` with everything outside `box` filled with its median colour."""
    pixels = np.asarray(image.convert("RGB"))
    view = np.empty_like(pixels)
    view[:] = np.median(pixels.reshape(-1, 3), axis=0).astype(pixels.dtype)
    left, top, right, bottom = box
    view[top:bottom, left:right] = pixels[top:bottom, left:right]
    return Image.fromarray(view)


def object_support(
    scorer: ClipScorer,
    images: Sequence[Image.Image],
    phrases: Sequence[str],
    phrase_objects: Sequence[str],
    window: float = 1 / 3,
) -> tuple[np.ndarray, list[str]]:
    """(support, objects): support[i, j] in [0, 1] is how much CLIP finds object j in some window of image i,
    given that each window is one of `phrases` ("a red circle."); `phrase_objects[p]` is the object phrase p
    names. The softmax over phrases runs at the CLIP's own logit scale."""
    if len(phrases) != len(phrase_objects):
        raise ValueError(f"{len(phrases)} phrases but {len(phrase_objects)} objects for them")
    if not phrases:
        raise ValueError("object_support needs at least one phrase")
    objects = sorted(set(phrase_objects))
    owner = torch.zeros(len(phrases), len(objects))
    owner[torch.arange(len(phrases)), torch.tensor([objects.index(o) for o in phrase_objects])] = 1.0
    text = scorer.text_embeddings(list(phrases)).cpu()
    scale = scorer.model.logit_scale.exp().item() if hasattr(scorer.model, "logit_scale") else 100.0
    support = np.empty((len(images), len(objects)), dtype=np.float32)
    for i, image in enumerate(images):
        boxes = sliding_boxes(*image.size, window=window)
        views = scorer.image_embeddings([masked_view(image, box) for box in boxes]).cpu()  # (windows, dim)
        shares = (scale * views @ text.T).softmax(-1) @ owner  # (windows, objects)
        support[i] = shares.max(0).values.numpy()
    return support, objects


def rank_auc(higher: Sequence[float], lower: Sequence[float]) -> float:
    """The probability that a value of `higher` exceeds one of `lower` (ties count half): ROC AUC."""
    a, b = np.asarray(higher, dtype=float), np.asarray(lower, dtype=float)
    if a.size == 0 or b.size == 0:
        return float("nan")
    greater = (a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()
    return float(greater / (a.size * b.size))
