"""The shapes world: coloured shapes on named textured backgrounds, with exact boxes and masks.

Everything is a pure function of a seed (numpy ``default_rng``), so an image or a video can be
re-created anywhere from ``(seed, index)``. Shapes are drawn without anti-aliasing in saturated
colours over desaturated backgrounds: the colour detector (``detector.py``) is then exact on
generated frames, and the captions name colours, shapes and the background but never positions
(like SD, the model places objects where it likes; only RAD can put them in a box).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 64  # image side in pixels (RAD grid 8×8 at 8 px per cell)

# Saturated shape colours, far (in RGB and in chroma) from every background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("gray", "white", "striped", "checkered", "dotted")

RADIUS_RANGE = (8, 14)  # half the bounding-box side, pixels
POSITION_WORDS = ("left", "right", "top", "bottom", "above", "below", "center", "centre",
                  "middle", "corner", "upper", "lower", "near", "next")


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    radius: float  # half the side of the bounding square

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Sample:
    """One image or video of the world. ``frames`` (F,H,W,3) uint8; F = 1 for images."""

    frames: np.ndarray
    background: np.ndarray  # (H,W,3) uint8, the static background (invariant-region truth)
    background_name: str
    shapes: list[Shape]
    centers: np.ndarray  # (J,F,2) float, x,y in pixel coordinates (pixel centres at +0.5)
    boxes: np.ndarray  # (J,F,4) int, x1,y1,x2,y2 with x2,y2 exclusive (tight around the mask)
    masks: np.ndarray  # (J,F,H,W) bool, visible pixels of each shape
    caption: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def image(self) -> np.ndarray:
        return self.frames[0]


# --------------------------------------------------------------------------- backgrounds

def render_background(name: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Neutral (chroma ≤ ~12), low-contrast textures: easy for the VAE, invisible to the detector."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = rng.integers(112, 140)
    tint = rng.integers(-6, 7, size=3)  # faint tint so backgrounds are not all identical
    if name == "gray":
        lum = np.full((size, size), base, float)
    elif name == "white":
        lum = np.full((size, size), rng.integers(205, 226), float)
    elif name == "striped":
        period = int(rng.integers(6, 11))
        phase = int(rng.integers(0, period))
        if rng.random() < 0.5:
            t = xx + yy  # diagonal
        else:
            t = yy if rng.random() < 0.5 else xx
        lum = np.where(((t + phase) // (period // 2 + 1)) % 2 == 0, base - 14, base + 14).astype(float)
    elif name == "checkered":
        cell = int(rng.integers(6, 11))
        ox, oy = rng.integers(0, cell, size=2)
        lum = np.where((((xx + ox) // cell) + ((yy + oy) // cell)) % 2 == 0, base - 14, base + 14).astype(float)
    elif name == "dotted":
        step = int(rng.integers(7, 10))
        ox, oy = rng.integers(0, step, size=2)
        dx = (xx + ox) % step - step / 2 + 0.5
        dy = (yy + oy) % step - step / 2 + 0.5
        lum = np.where(dx * dx + dy * dy <= 2.5, base + 40, base).astype(float)
    else:
        raise ValueError(f"unknown background {name!r}; choose from {BACKGROUNDS}")
    img = lum[..., None] + tint[None, None, :]
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- shapes

def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean mask sampled at pixel centres (no anti-aliasing: the detector stays exact)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = 0.85 * r  # same area order as the circle
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":
        # upright isosceles triangle inscribed in the 2r square: apex on top, base at the bottom
        t = (dy + r) / (2 * r)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t)
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4, int)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], int)


def compose(background: np.ndarray, shapes: list[Shape], centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint shapes (in list order, later on top) at ``centers`` (J,2). Returns image, masks (J,H,W)."""
    img = background.copy()
    size = img.shape[0]
    masks = np.zeros((len(shapes), size, size), bool)
    for j, (s, (cx, cy)) in enumerate(zip(shapes, centers)):
        m = shape_mask(s.shape, cx, cy, s.radius, size)
        masks[:j][:, m] = False  # occluded parts are no longer visible
        masks[j] = m
        img[m] = COLORS[s.color]
    return img, masks


# --------------------------------------------------------------------------- captions

def caption(shapes: list[Shape], background_name: str) -> str:
    """"a red circle and a blue square on a gray background" — never positions."""
    phrases = [f"a {s.phrase}" for s in shapes]
    if len(phrases) == 1:
        objs = phrases[0]
    else:
        objs = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{objs} on a {background_name} background"


def vocabulary() -> list[str]:
    """Every word a caption can contain (for the tokenizer)."""
    words = ["a", "and", "on", "background", ","]
    return words + list(COLORS) + list(SHAPES) + list(BACKGROUNDS)


# --------------------------------------------------------------------------- sampling

def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def sample_shapes(rng: np.random.Generator, n_objects: int) -> list[Shape]:
    """Distinct colours (so a colour word names one object); shapes may repeat."""
    colors = rng.choice(list(COLORS), size=n_objects, replace=False)
    return [Shape(str(c), str(rng.choice(SHAPES)), float(rng.uniform(*RADIUS_RANGE))) for c in colors]


def shapes_apart(centers: np.ndarray, radii: np.ndarray, margin: float = 2.0) -> bool:
    """No two shapes (centres (J, 2), radii (J,)) come within `margin` px of each other."""
    for a in range(len(radii)):
        for b in range(a + 1, len(radii)):
            # squares/triangles reach to the bounding square: compare on the L∞ distance
            if np.abs(centers[a] - centers[b]).max() < radii[a] + radii[b] + margin:
                return False
    return True


def paths_fit(paths: np.ndarray, radii: np.ndarray, size: int = SIZE) -> bool:
    """Every shape (paths (J, F, 2) centres, radii (J,)) wholly in the frame and no two touching, in every frame."""
    inside = all(((paths[j] >= radii[j]) & (paths[j] <= size - radii[j])).all() for j in range(len(radii)))
    return inside and all(shapes_apart(paths[:, f], radii) for f in range(paths.shape[1]))


def _place(rng: np.random.Generator, radii: np.ndarray, size: int, tries: int = 200) -> np.ndarray | None:
    for _ in range(tries):
        c = np.stack([rng.uniform(r, size - r, size=2) for r in radii])
        if shapes_apart(c, radii):
            return c
    return None


def n_objects_for(rng: np.random.Generator, weights=(0.35, 0.55, 0.10)) -> int:
    return int(rng.choice([1, 2, 3], p=np.asarray(weights) / np.sum(weights)))


def make_image(seed: int, index: int = 0, n_objects: int | None = None, size: int = SIZE,
               shapes: list[Shape] | None = None, background: str | None = None) -> Sample:
    """One still image. Deterministic in (seed, index) and the optional overrides."""
    rng = _rng(seed, index)
    while True:
        k = n_objects if n_objects is not None else n_objects_for(rng)
        objs = shapes if shapes is not None else sample_shapes(rng, k)
        bg_name = background if background is not None else str(rng.choice(BACKGROUNDS))
        radii = np.array([s.radius for s in objs])
        centers = _place(rng, radii, size)
        if centers is not None:
            break
        if shapes is not None:
            raise ValueError("cannot place these shapes apart in the image; use smaller radii")
    bg = render_background(bg_name, rng, size)
    img, masks = compose(bg, objs, centers)
    boxes = np.stack([_box(m) for m in masks])
    return Sample(img[None], bg, bg_name, list(objs), centers[:, None].copy(), boxes[:, None],
                  masks[:, None], caption(objs, bg_name))


def smooth_path(rng: np.random.Generator, r: float, n_frames: int, size: int) -> np.ndarray:
    """Smooth path: a straight segment plus a gentle sideways arc. (F,2) centres."""
    lo, hi = r, size - r
    p0 = rng.uniform(lo, hi, size=2)
    p1 = rng.uniform(lo, hi, size=2)
    d = p1 - p0
    length = np.linalg.norm(d)
    max_len = 0.5 * size  # keep motion moderate: ≤ half the frame over the clip
    if length > max_len:
        p1 = p0 + d * max_len / length
        d = p1 - p0
    normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-6)
    amp = rng.uniform(-0.15, 0.15) * np.linalg.norm(d)
    s = np.linspace(0.0, 1.0, n_frames)[:, None]
    return p0 + d * s + normal * amp * np.sin(np.pi * s)


def make_video(seed: int, index: int = 0, n_frames: int = 8, n_objects: int = 2, size: int = SIZE,
               shapes: list[Shape] | None = None, background: str | None = None) -> Sample:
    """Shapes moving over a static background; shapes never touch, never leave the frame."""
    rng = _rng(seed, index)
    objs = shapes if shapes is not None else sample_shapes(rng, n_objects)
    bg_name = background if background is not None else str(rng.choice(BACKGROUNDS))
    radii = np.array([s.radius for s in objs])
    for _ in range(1000):
        paths = np.stack([smooth_path(rng, r, n_frames, size) for r in radii])  # (J,F,2)
        if paths_fit(paths, radii, size):
            break
    else:
        raise ValueError("could not find non-overlapping paths; use fewer or smaller shapes")
    return render_video(render_background(bg_name, rng, size), bg_name, objs, paths)


def render_video(bg: np.ndarray, bg_name: str, shapes: list[Shape], paths: np.ndarray) -> Sample:
    """The clip of `shapes` moving along `paths` (J,F,2 centres) over the static `bg`, with exact
    masks and boxes (a shape partly outside the frame gets the box of its visible pixels)."""
    frames, masks = [], []
    for f in range(paths.shape[1]):
        img, m = compose(bg, shapes, paths[:, f])
        frames.append(img)
        masks.append(m)
    frames = np.stack(frames)
    masks = np.stack(masks, axis=1)  # (J,F,H,W)
    boxes = np.stack([[_box(masks[j, f]) for f in range(paths.shape[1])] for j in range(len(shapes))])
    return Sample(frames, bg, bg_name, list(shapes), paths, boxes, masks, caption(shapes, bg_name))


# --------------------------------------------------------------------------- tensors

def to_tensor(images: np.ndarray):
    """uint8 (…,H,W,3) → float tensor (…,3,H,W) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def image_batch(seed: int, start: int, count: int, size: int = SIZE):
    """Images (count,3,H,W) in [-1,1] and their captions, for indices start … start+count-1."""
    samples = [make_image(seed, i, size=size) for i in range(start, start + count)]
    return to_tensor(np.stack([s.image for s in samples])), [s.caption for s in samples]
