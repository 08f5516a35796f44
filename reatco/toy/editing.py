"""Editing cases of the shapes world and their exact scores (placement, relations, invariant region).

A case is a source video of two moving shapes and an edit that turns them into two *other*
objects — new colours (the two the source does not use, so the detector cannot mistake a source
object for an edited one) and random shapes — with one region per edited object that follows one
source object's exact per-frame box. The edit prompt names the objects in region order, so the
model cannot satisfy it by just recolouring each source object after its own shape: only
attention control decides which new object lands in which region.

    case = make_edit_case(seed, index)
    frames = pipe(case.prompt, video=case.video_tensor(), objects=case.objects(), ...)
    placement_scores(frames_uint8, case), invariant_psnr(frames_uint8, case)

PSNR is the evaluation's own (`reatco.metrics.fidelity.masked_psnr`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics.fidelity import masked_psnr
from . import world
from .detector import detect


@dataclass
class EditCase:
    source: world.Sample
    targets: list[tuple[str, str]]  # (colour, shape) of edited object j, placed in region j
    prompt: str
    box_grid: int = 1  # the region boxes are the source boxes rounded out to this many pixels

    @property
    def words(self) -> list[str]:
        return [f"{c} {s}" for c, s in self.targets]

    @property
    def boxes(self) -> np.ndarray:
        """(J, F, 4) int pixel boxes x1, y1, x2, y2 (exclusive): region j follows source object j,
        its tight box rounded outwards to multiples of `box_grid` pixels."""
        return snap_boxes(self.source.boxes, self.box_grid, self.source.frames.shape[1])

    def objects(self) -> list[dict]:
        """The pipeline's `objects`: one word and per-frame boxes per edited object."""
        return [
            {"word": w, "boxes": {f: [int(v) for v in self.boxes[j, f]] for f in range(self.boxes.shape[1])}}
            for j, w in enumerate(self.words)
        ]

    def video_tensor(self):
        """(F, 3, H, W) float in [-1, 1]."""
        return world.to_tensor(self.source.frames)

    def outside_mask(self) -> np.ndarray:
        """(F, H, W) bool: pixels outside every region box — the invariant region."""
        n_f, h, w = self.source.frames.shape[:3]
        inside = np.zeros((n_f, h, w), bool)
        for j in range(self.boxes.shape[0]):
            for f in range(n_f):
                x1, y1, x2, y2 = self.boxes[j, f]
                inside[f, y1:y2, x1:x2] = True
        return ~inside

    def edited_cells(self, latent_size: int) -> np.ndarray:
        """(F, H, W) bool: the pixels of the latent cells IRJS leaves to the model — the regions on
        the `latent_size`² latent grid by the pipeline's own default rule (regions.py, rad.box_grid
        "round"). Outside the boxes these are the pixels IRJS cannot keep."""
        from ..irjs import latent_region_mask
        from ..regions import object_masks, parse_region

        n_f, h, w = self.source.frames.shape[:3]
        if h % latent_size or w % latent_size:
            raise ValueError(f"{h}×{w} frames are not a whole number of {latent_size}² latent cells")
        regions = [parse_region(o, n_f, h, w, 1) for o in self.objects()]
        masks = object_masks(regions, n_f, latent_size, latent_size)
        cells = latent_region_mask(masks, latent_size, latent_size)[0, 0].numpy() > 0  # the mask IRJS blends with
        return np.repeat(np.repeat(cells, h // latent_size, 1), w // latent_size, 2)


def snap_boxes(boxes: np.ndarray, grid: int, size: int) -> np.ndarray:
    """Boxes (…, 4) x1, y1, x2, y2 rounded outwards to multiples of `grid` pixels, within the image."""
    lo = boxes[..., :2] // grid * grid
    hi = np.minimum(-(-boxes[..., 2:] // grid) * grid, size)
    return np.concatenate([lo, hi], -1)


def make_edit_case(seed: int, index: int, n_frames: int = 8, box_grid: int = 1) -> EditCase:
    """Deterministic case `index` of the benchmark seeded by `seed`. `box_grid` rounds the region
    boxes out to a pixel grid: the VAE's latent cell (4 px) puts them where IRJS can keep
    exactly what lies outside; 1 keeps the source objects' tight boxes."""
    rng = np.random.default_rng([seed, index, 77])
    for attempt in range(100):
        try:
            source = world.make_video(seed, index * 1000 + attempt, n_frames=n_frames, n_objects=2)
            break
        except ValueError:  # no non-overlapping paths for these shapes: draw another video
            continue
    else:  # pragma: no cover - 100 failures in a row do not happen with the world's sizes
        raise RuntimeError(f"no two-object video found for case {index}")
    free = [c for c in world.COLORS if c not in {s.color for s in source.shapes}]
    rng.shuffle(free)
    targets = [(str(free[j]), str(rng.choice(world.SHAPES))) for j in range(2)]
    prompt = f"a {targets[0][0]} {targets[0][1]} and a {targets[1][0]} {targets[1][1]} on a {source.background_name} background"
    return EditCase(source, targets, prompt, box_grid)


def relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where b is relative to a along the dominant axis: left / right / above / below."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "below" if dy > 0 else "above"


def placement_scores(frames: np.ndarray, case: EditCase) -> dict:
    """Per frame: is every edited object found with its blob's centroid inside its own region box?
    And does the relation of the two found objects (VISOR's left/right/above/below) match the
    relation of their regions? frames (F, H, W, 3) uint8. Returns the fractions of frames and the
    per-frame details."""
    colours = [c for c, _ in case.targets]
    per_frame = []
    for f, image in enumerate(frames):
        found = detect(image, colours)
        objects = []
        for j, colour in enumerate(colours):
            d = found[colour]
            x1, y1, x2, y2 = (int(v) for v in case.boxes[j, f])
            inside = bool(d.found and x1 <= d.centroid[0] <= x2 and y1 <= d.centroid[1] <= y2)
            objects.append({"found": d.found, "centroid": d.centroid, "inside": inside, "shape": d.shape})
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in case.boxes[:, f].tolist()]
        wanted = relation(centres[0], centres[1])
        got = relation(objects[0]["centroid"], objects[1]["centroid"]) if all(o["found"] for o in objects) else None
        per_frame.append({"placed": all(o["inside"] for o in objects), "relation": got == wanted,
                          "shapes": all(o["shape"] == s for o, (_, s) in zip(objects, case.targets)), "objects": objects})
    n = max(1, len(per_frame))
    return {
        "placement": sum(p["placed"] for p in per_frame) / n,
        "relation": sum(p["relation"] for p in per_frame) / n,
        "shapes": sum(p["shapes"] for p in per_frame) / n,
        "frames": per_frame,
    }


def region_attention_mass(maps, case: EditCase) -> float:
    """Mean over objects and frames of the fraction of word j's attention map (J, F, h, w), as
    the pipeline returns it, that lies in region j's cells (the cells RAD pulls the word into)."""
    from ..regions import parse_region

    n_j, n_f, h, w = maps.shape
    cell = case.source.frames.shape[1] // h
    fractions = []
    for j, obj in enumerate(case.objects()[:n_j]):
        cover = parse_region(obj, n_f, h * cell, w * cell, cell).masks(n_f, h, w)  # (F, h, w)
        m = maps[j].float()
        inside = (m * cover).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-12)
        fractions.append(float(inside.mean()))
    return float(np.mean(fractions))


def invariant_psnr(frames: np.ndarray, case: EditCase) -> float:
    """PSNR of the edited frames against the source outside every region (the invariant region)."""
    return masked_psnr(frames, case.source.frames, case.outside_mask())


def invariant_breakdown(frames: np.ndarray, case: EditCase, latent_size: int) -> dict:
    """Where the invariant region's error comes from under IRJS, which works on latent cells: the
    part in cells kept from the source (error = the VAE's and what leaks across cell edges in
    decoding) and the part in cells the regions' edges cut (left to the model). PSNR of each part
    (nan when a part is empty) and the second part's share of the invariant pixels."""
    outside, edited = case.outside_mask(), case.edited_cells(latent_size)
    return {
        "kept_cells_psnr": masked_psnr(frames, case.source.frames, outside & ~edited),
        "cut_cells_psnr": masked_psnr(frames, case.source.frames, outside & edited),
        "cut_cells_share": float((outside & edited).sum() / max(1, outside.sum())),
    }
