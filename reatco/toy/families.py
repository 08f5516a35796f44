"""Harder families of editing cases for the shapes benchmark, each selectable by name.

`base` is `editing.make_edit_case` (two objects on gentle paths). The others each stress one
thing the base family never draws:

  cross      two objects that cross and swap sides (left ↔ right) over the clip; each new object
             takes the *other* source object's shape, so recolouring the sources puts them the
             wrong way round (the paper's "the jellyfish to the left of the goldfish")
  three      three objects edited at once (the paper's birds); the edit's colours may be source
             colours, but never the colour of the object a region follows
  long       clips of twice the frames (16 at the benchmark's 8); a 4k + 1-frame clip (Wan's) gets
             2(n − 1) + 1, again 4k + 1 (17 at 9)
  fast       4–6 px per frame, in a straight line
  border     each object runs along a frame edge, 20–70 % of its radius outside the frame
  box_scale  one region 0.6–0.8 × its source box, the other 1.3–1.6 × (about the box's centre)
  keep       one object edited, the other named unchanged in the prompt and given no region: it
             must stay as it was (`editing.kept_scores`)

    case = make_case("cross", seed, index, n_frames=8, box_grid=4)

Every case is a pure function of (family, seed, index, n_frames, box_grid).
"""

from __future__ import annotations

import numpy as np

from . import world
from .editing import EditCase, make_edit_case, snap_boxes

FAMILIES = ("base", "cross", "three", "long", "fast", "border", "box_scale", "keep")


def make_case(family: str, seed: int, index: int, n_frames: int = 8, box_grid: int = 1) -> EditCase:
    """Case `index` of `family` in the benchmark seeded by `seed` (see the module's docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown case family {family!r}; choose from {', '.join(FAMILIES)}")
    if family == "base":
        return make_edit_case(seed, index, n_frames=n_frames, box_grid=box_grid)
    rng = np.random.default_rng([seed, index, 78, FAMILIES.index(family)])
    for _ in range(500):
        case = _BUILDERS[family](rng, n_frames, box_grid)
        if case is not None:
            case.family = family
            return case
    raise RuntimeError(f"no {family} case found for index {index}")  # pragma: no cover - the sizes leave room


# --------------------------------------------------------------------------- shared pieces

def _background(rng) -> tuple[np.ndarray, str]:
    name = str(rng.choice(world.BACKGROUNDS))
    return world.render_background(name, rng), name


def _shapes(rng, n: int, radius=world.RADIUS_RANGE) -> list[world.Shape]:
    colours = rng.choice(list(world.COLORS), size=n, replace=False)
    return [world.Shape(str(c), str(rng.choice(world.SHAPES)), float(rng.uniform(*radius))) for c in colours]


def _free_targets(rng, source: world.Sample, n: int) -> list[tuple[str, str]]:
    """n (colour, shape) pairs in colours the source does not use, shapes at random."""
    free = [c for c in world.COLORS if c not in {s.color for s in source.shapes}]
    rng.shuffle(free)
    return [(str(free[j]), str(rng.choice(world.SHAPES))) for j in range(n)]


def _prompt(phrases: list[str], background: str) -> str:
    objects = [f"a {p}" for p in phrases]
    listed = objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]
    return f"{listed} on a {background} background"


def _line(p0, p1, n_frames: int) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n_frames)[:, None]
    return np.asarray(p0, float) + (np.asarray(p1, float) - np.asarray(p0, float)) * s


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Do boxes (…, 4) a and b overlap anywhere (per-frame pairs)?"""
    return bool(((np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2])) > 0).all(-1).any())


def _two_object_case(rng, source: world.Sample, box_grid: int, **kw) -> EditCase:
    targets = _free_targets(rng, source, 2)
    return EditCase(source, targets, _prompt([f"{c} {s}" for c, s in targets], source.background_name), box_grid, **kw)


# --------------------------------------------------------------------------- families

def _cross(rng, n_frames: int, box_grid: int) -> EditCase | None:
    size = world.SIZE
    shapes = _shapes(rng, 2, (8.0, 12.0))
    if shapes[0].shape == shapes[1].shape:
        return None  # the swapped shapes must differ for the swap to mean anything
    radii = np.array([s.radius for s in shapes])
    ys = np.array([rng.uniform(r, size - r) for r in radii])
    if abs(ys[0] - ys[1]) < radii.sum() + 2:
        return None  # they pass each other above and below, never touching
    lefts = [rng.uniform(r, 16) for r in radii]
    rights = [rng.uniform(48, size - r) for r in radii]
    drift = rng.uniform(-3, 3, size=2)
    paths = np.stack([_line((lefts[0], ys[0]), (rights[0], ys[0] + drift[0]), n_frames),
                      _line((rights[1], ys[1]), (lefts[1], ys[1] + drift[1]), n_frames)])
    # left/right must be the dominant relation at both ends, so that VISOR reads the swap
    ends = paths[:, [0, -1]]
    if not world.paths_fit(paths, radii) or (np.abs(ends[0, :, 1] - ends[1, :, 1]) >= np.abs(ends[0, :, 0] - ends[1, :, 0])).any():
        return None
    bg, name = _background(rng)
    source = world.render_video(bg, name, shapes, paths)
    free = [c for c in world.COLORS if c not in {s.color for s in shapes}]
    rng.shuffle(free)
    targets = [(str(free[0]), shapes[1].shape), (str(free[1]), shapes[0].shape)]  # each takes the other's shape
    return EditCase(source, targets, _prompt([f"{c} {s}" for c, s in targets], name), box_grid)


def _three(rng, n_frames: int, box_grid: int) -> EditCase | None:
    shapes = _shapes(rng, 3, (7.0, 10.0))
    radii = np.array([s.radius for s in shapes])
    for _ in range(200):  # three apart all along is the rare part: redraw the paths before the shapes
        paths = np.stack([world.smooth_path(rng, r, n_frames, world.SIZE) for r in radii])
        if world.paths_fit(paths, radii):
            break
    else:
        return None
    colours = [str(c) for c in rng.permutation(list(world.COLORS))[:3]]
    if any(c == s.color for c, s in zip(colours, shapes)):
        return None  # an unedited source object must never pass for its region's new object
    bg, name = _background(rng)
    source = world.render_video(bg, name, shapes, paths)
    targets = [(c, str(rng.choice(world.SHAPES))) for c in colours]
    return EditCase(source, targets, _prompt([f"{c} {s}" for c, s in targets], name), box_grid)


def _two_moving_objects(rng, n_frames: int):
    """(shapes, background name, rendered video) of two shapes on the world's gentle paths over a drawn background,
    or None when the paths touch (the caller draws the case again)."""
    shapes = _shapes(rng, 2)
    radii = np.array([s.radius for s in shapes])
    paths = np.stack([world.smooth_path(rng, r, n_frames, world.SIZE) for r in radii])
    if not world.paths_fit(paths, radii):
        return None
    bg, name = _background(rng)
    return shapes, name, world.render_video(bg, name, shapes, paths)


def long_frames(n_frames: int) -> int:
    """The `long` family's clip length: twice the frames, or twice the frame steps for a 4k + 1-frame
    clip, so that a Wan-length clip stays one its VAE takes (9 → 17, not 18)."""
    return 2 * n_frames - 1 if n_frames % 4 == 1 and n_frames > 1 else 2 * n_frames


def _long(rng, n_frames: int, box_grid: int) -> EditCase | None:
    drawn = _two_moving_objects(rng, long_frames(n_frames))
    return None if drawn is None else _two_object_case(rng, drawn[2], box_grid)


FAST_PX = (4.0, 6.0)  # px per frame (the base family: ≤ 32 px over the clip)


def _fast(rng, n_frames: int, box_grid: int) -> EditCase | None:
    size = world.SIZE
    shapes = _shapes(rng, 2, (8.0, 11.0))
    radii = np.array([s.radius for s in shapes])
    for _ in range(200):  # a start that keeps the whole path in the frame, then the two apart
        paths = []
        for r in radii:
            angle = rng.uniform(0, 2 * np.pi)
            travel = rng.uniform(*FAST_PX) * (n_frames - 1) * np.array([np.cos(angle), np.sin(angle)])
            lo, hi = r - np.minimum(travel, 0), size - r - np.maximum(travel, 0)
            if (lo > hi).any():
                break
            p0 = rng.uniform(lo, hi)
            paths.append(_line(p0, p0 + travel, n_frames))
        if len(paths) == 2 and world.paths_fit(np.stack(paths), radii):
            break
    else:
        return None
    paths = np.stack(paths)
    bg, name = _background(rng)
    return _two_object_case(rng, world.render_video(bg, name, shapes, paths), box_grid)


BORDER_DEPTH = (0.3, 0.8)  # the centre's distance from its edge, in radii (< 1: partly outside)


def _border(rng, n_frames: int, box_grid: int) -> EditCase | None:
    size = world.SIZE
    shapes = _shapes(rng, 2)
    radii = np.array([s.radius for s in shapes])
    paths = []
    for r in radii:
        depth = rng.uniform(*BORDER_DEPTH) * r
        a, b = rng.uniform(r, size - r, size=2)
        b = a + np.clip(b - a, -size / 2, size / 2)
        along = np.linspace(a, b, n_frames)
        edge = int(rng.integers(4))  # left, right, top, bottom
        across = np.full(n_frames, depth if edge in (0, 2) else size - depth)
        paths.append(np.stack([across, along], 1) if edge < 2 else np.stack([along, across], 1))
    paths = np.stack(paths)
    if not all(world.shapes_apart(paths[:, f], radii) for f in range(n_frames)):
        return None
    bg, name = _background(rng)
    source = world.render_video(bg, name, shapes, paths)
    if (source.masks.sum((2, 3)) < 24).any():
        return None  # each object keeps at least twice the detector's floor in view
    return _two_object_case(rng, source, box_grid)


SMALLER, LARGER = (0.6, 0.8), (1.3, 1.6)  # region / source box, per side


def _box_scale(rng, n_frames: int, box_grid: int) -> EditCase | None:
    drawn = _two_moving_objects(rng, n_frames)
    if drawn is None:
        return None
    scale = [rng.uniform(*SMALLER), rng.uniform(*LARGER)]
    rng.shuffle(scale)
    case = _two_object_case(rng, drawn[2], box_grid, region_scale=[float(s) for s in scale])
    return None if _overlap(case.boxes[0], case.boxes[1]) else case


def _keep(rng, n_frames: int, box_grid: int) -> EditCase | None:
    drawn = _two_moving_objects(rng, n_frames)
    if drawn is None:
        return None
    shapes, name, source = drawn
    edited = int(rng.integers(2))
    kept = 1 - edited
    target = _free_targets(rng, source, 1)[0]
    phrases = [f"{target[0]} {target[1]}", shapes[kept].phrase]
    if rng.random() < 0.5:
        phrases.reverse()
    case = EditCase(source, [target], _prompt(phrases, name), box_grid, edited=[edited], kept=[kept])
    region = snap_boxes(source.boxes[edited], box_grid, world.SIZE)
    for f in range(n_frames):  # the kept object lies wholly in the invariant region
        x1, y1, x2, y2 = region[f]
        if source.masks[kept, f, y1:y2, x1:x2].any():
            return None
    return case


_BUILDERS = {"cross": _cross, "three": _three, "long": _long, "fast": _fast, "border": _border,
             "box_scale": _box_scale, "keep": _keep}
