"""Colour-segmentation detector for the shapes world.

A pixel belongs to colour c when it is saturated (backgrounds are neutral) and c is its nearest
palette colour within ``max_distance``. Per colour, the largest connected blob (ignoring blobs
under ``min_pixels``) gives centroid, box, area and a shape class from how much of its box it
fills (square ≈ 1, circle ≈ π/4, triangle ≈ 1/2). Exact on generated frames (no anti-aliasing);
the thresholds leave room for the small colour errors of model outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .world import COLORS

PALETTE = np.array(list(COLORS.values()), float)
NAMES = list(COLORS)


@dataclass
class Detection:
    color: str
    found: bool
    centroid: tuple[float, float] | None = None  # x, y (pixel centres at +0.5)
    box: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 (exclusive)
    pixels: int = 0
    shape: str | None = None
    fill: float = 0.0  # blob pixels / box pixels

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def classify_pixels(image: np.ndarray, max_distance: float = 90.0, min_chroma: float = 60.0) -> np.ndarray:
    """(H,W,3) uint8 → (H,W) int: palette index, or -1 for background."""
    x = image.astype(float)
    chroma = x.max(-1) - x.min(-1)
    d = np.linalg.norm(x[..., None, :] - PALETTE, axis=-1)  # (H,W,K)
    idx = d.argmin(-1)
    ok = (d.min(-1) <= max_distance) & (chroma >= min_chroma)
    return np.where(ok, idx, -1)


def shape_from_fill(fill: float, aspect: float) -> str:
    """Fill ratio of the bounding box → class; thresholds halfway between the ideal values
    (square 1, circle π/4 ≈ 0.785, triangle 0.5). A width-profile classifier was tried on model
    samples and did no better: the errors are the model's rounded squares, not the rule."""
    if fill >= 0.89 and 0.7 <= aspect <= 1.4:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def _detect_one(labels: np.ndarray, k: int, min_pixels: int) -> Detection:
    name = NAMES[k]
    blobs, n = ndimage.label(labels == k)
    if n == 0:
        return Detection(name, False)
    sizes = ndimage.sum_labels(np.ones_like(blobs), blobs, index=np.arange(1, n + 1))
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] < min_pixels:
        return Detection(name, False)
    ys, xs = np.nonzero(blobs == best)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    fill = len(xs) / float((x2 - x1) * (y2 - y1))
    shape = shape_from_fill(fill, (x2 - x1) / float(y2 - y1))
    return Detection(name, True, (float(xs.mean() + 0.5), float(ys.mean() + 0.5)), (x1, y1, x2, y2),
                     int(len(xs)), shape, float(fill))


def detect(image: np.ndarray, colors: list[str] | None = None, min_pixels: int = 12,
           max_distance: float = 90.0) -> dict[str, Detection]:
    """Detections per requested colour (all palette colours when None)."""
    labels = classify_pixels(np.asarray(image), max_distance)
    wanted = colors if colors is not None else NAMES
    out = {}
    for c in wanted:
        if c not in COLORS:
            raise ValueError(f"unknown colour {c!r}; the world has {NAMES}")
        out[c] = _detect_one(labels, NAMES.index(c), min_pixels)
    return out


def detect_present(image: np.ndarray, min_pixels: int = 12) -> list[Detection]:
    """Only the colours that are found."""
    return [d for d in detect(image, None, min_pixels).values() if d.found]
