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

from dataclasses import dataclass, field

import numpy as np

from ..metrics.fidelity import masked_psnr
from . import world
from .detector import NAMES, classify_pixels, detect


@dataclass
class EditCase:
    source: world.Sample
    targets: list[tuple[str, str]]  # (colour, shape) of edited object j, placed in region j
    prompt: str
    box_grid: int = 1  # the region boxes are the source boxes rounded out to this many pixels
    edited: list[int] | None = None  # the source object region j follows (None: object j)
    kept: list[int] = field(default_factory=list)  # source objects the prompt names unchanged, with no region
    region_scale: list[float] | None = None  # region j: its source box scaled by this about its centre
    family: str = "base"

    @property
    def words(self) -> list[str]:
        return [f"{c} {s}" for c, s in self.targets]

    @property
    def followed(self) -> list[int]:
        """The source object each region follows."""
        return list(range(len(self.targets))) if self.edited is None else list(self.edited)

    @property
    def boxes(self) -> np.ndarray:
        """(J, F, 4) int pixel boxes x1, y1, x2, y2 (exclusive): region j follows source object
        `followed[j]`, its tight box (scaled by `region_scale[j]` if given) rounded outwards to
        multiples of `box_grid` pixels."""
        size = self.source.frames.shape[1]
        boxes = self.source.boxes[self.followed]
        if self.region_scale is not None:
            boxes = scale_boxes(boxes, np.asarray(self.region_scale, float)[:, None], size)
        return snap_boxes(boxes, self.box_grid, size)

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
        from ..irjs.blend import latent_region_mask
        from ..regions.region import object_masks
        from ..regions.parsing import parse_region
        from ..regions.settings import object_settings

        n_f, h, w = self.source.frames.shape[:3]
        if h % latent_size or w % latent_size:
            raise ValueError(f"{h}×{w} frames are not a whole number of {latent_size}² latent cells")
        regions = [parse_region(object_settings(o), n_f, h, w, 1) for o in self.objects()]
        masks = object_masks(regions, n_f, latent_size, latent_size)
        cells = latent_region_mask(masks, latent_size, latent_size)[0, 0].numpy() > 0  # the mask IRJS blends with
        return np.repeat(np.repeat(cells, h // latent_size, 1), w // latent_size, 2)


def scale_boxes(boxes: np.ndarray, scale, size: int) -> np.ndarray:
    """Boxes (…, 4) scaled by `scale` (broadcast over …) about their centres, rounded outwards
    to whole pixels, within the image."""
    boxes = np.asarray(boxes, float)
    centre, half = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]) / 2
    half = half * np.asarray(scale, float)[..., None]
    lo = np.clip(np.floor(centre - half), 0, size)
    hi = np.clip(np.ceil(centre + half), 0, size)
    return np.concatenate([lo, hi], -1).astype(int)


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
    And does every pair of objects (the edited ones, found by their new colours, and the kept
    ones, by their source colours) stand in the relation (VISOR's left/right/above/below) of
    their boxes? frames (F, H, W, 3) uint8. Returns the fractions of frames and the per-frame
    details."""
    n_j = len(case.targets)
    colours = [c for c, _ in case.targets] + [case.source.shapes[k].color for k in case.kept]
    per_frame = []
    for f, image in enumerate(frames):
        found = detect(image, colours)
        boxes = case.boxes[:, f].tolist() + case.source.boxes[case.kept, f].tolist()
        objects = []
        for j, colour in enumerate(colours):
            d = found[colour]
            x1, y1, x2, y2 = (int(v) for v in boxes[j])
            inside = bool(d.found and x1 <= d.centroid[0] <= x2 and y1 <= d.centroid[1] <= y2)
            objects.append({"found": d.found, "centroid": d.centroid, "inside": inside, "shape": d.shape})
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
        pairs = [(a, b) for a in range(len(colours)) for b in range(a + 1, len(colours))]
        related = all(objects[a]["found"] and objects[b]["found"]
                      and relation(objects[a]["centroid"], objects[b]["centroid"]) == relation(centres[a], centres[b])
                      for a, b in pairs)
        per_frame.append({"placed": all(o["inside"] for o in objects[:n_j]), "relation": related,
                          "shapes": all(o["shape"] == s for o, (_, s) in zip(objects, case.targets)), "objects": objects})
    n = max(1, len(per_frame))
    return {
        "placement": sum(p["placed"] for p in per_frame) / n,
        "relation": sum(p["relation"] for p in per_frame) / n,
        "shapes": sum(p["shapes"] for p in per_frame) / n,
        "frames": per_frame,
    }


def kept_scores(frames: np.ndarray, case: EditCase, min_iou: float = 0.8) -> float:
    """Fraction of frames in which every kept object is still there as it was: the pixels of its
    colour overlap its source mask with IoU ≥ `min_iou` (a moved, missing or doubled object falls
    below). nan for a case that keeps nothing."""
    if not case.kept:
        return float("nan")
    ok = []
    for f, image in enumerate(frames):
        labels = classify_pixels(np.asarray(image))
        good = True
        for k in case.kept:
            drawn, truth = labels == NAMES.index(case.source.shapes[k].color), case.source.masks[k, f]
            good &= bool((drawn & truth).sum() >= min_iou * max(1, (drawn | truth).sum()))
        ok.append(good)
    return float(np.mean(ok))


def stray_blobs(frames: np.ndarray, source_frames: np.ndarray, colours: list[str], inside: np.ndarray,
                min_pixels: int = 12) -> np.ndarray:
    """(F,) int: per frame, the blobs of the given colours that lie outside every region — the
    connected pixels of one colour (not already that colour in the source frame), at least
    `min_pixels` of them (the detector's floor), most of them outside `inside` ((F, H, W) bool,
    the regions). A pixel or two of an object smeared over its box edge belongs to a blob that
    is mostly inside and is not counted; an object drawn beside its region, or a second copy, is."""
    from scipy import ndimage

    counts = np.zeros(len(frames), int)
    for f, (image, source) in enumerate(zip(frames, source_frames)):
        labels, source_labels = classify_pixels(np.asarray(image)), classify_pixels(np.asarray(source))
        for colour in colours:
            k = NAMES.index(colour)
            blobs, n = ndimage.label((labels == k) & (source_labels != k))
            for b in range(1, n + 1):
                blob = blobs == b
                size, out = int(blob.sum()), int((blob & ~inside[f]).sum())
                counts[f] += size >= min_pixels and 2 * out > size
    return counts


def stray_frames(frames: np.ndarray, case: EditCase) -> float:
    """Fraction of frames with a stray blob of an edited colour (`stray_blobs`)."""
    colours = [c for c, _ in case.targets]
    return float((stray_blobs(frames, case.source.frames, colours, ~case.outside_mask()) > 0).mean())


def region_attention_mass(maps, case: EditCase) -> float:
    """Mean over objects and frames of the fraction of word j's attention map (J, F, h, w), as
    the pipeline returns it, that lies in region j's cells (the cells RAD pulls the word into)."""
    from ..regions.parsing import parse_region
    from ..regions.settings import object_settings

    n_j, n_f, h, w = maps.shape
    cell = case.source.frames.shape[1] // h
    fractions = []
    for j, obj in enumerate(case.objects()[:n_j]):
        cover = parse_region(object_settings(obj), n_f, h * cell, w * cell, cell).masks(n_f, h, w)  # (F, h, w)
        m = maps[j].float()
        inside = (m * cover).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-12)
        fractions.append(float(inside.mean()))
    return float(np.mean(fractions))


def invariant_psnr(frames: np.ndarray, case: EditCase) -> float:
    """PSNR of the edited frames against the source outside every region (the invariant region)."""
    return masked_psnr(frames, case.source.frames, case.outside_mask())


def invariant_breakdown(frames: np.ndarray, case: EditCase, latent_size: int, edited: np.ndarray | None = None) -> dict:
    """Where the invariant region's error comes from under IRJS, which works on latent cells: the
    part in cells kept from the source (error = the VAE's and what leaks across cell edges in
    decoding) and the part in cells the regions' edges cut (left to the model). PSNR of each part
    (nan when a part is empty) and the second part's share of the invariant pixels. `edited`
    (F, H, W) bool: the pixels the backbone leaves to the model, where they are not
    `case.edited_cells(latent_size)` (on Wan a latent frame's cells are the union over the 4 pixel
    frames it covers)."""
    outside = case.outside_mask()
    edited = case.edited_cells(latent_size) if edited is None else edited
    return {
        "kept_cells_psnr": masked_psnr(frames, case.source.frames, outside & ~edited),
        "cut_cells_psnr": masked_psnr(frames, case.source.frames, outside & edited),
        "cut_cells_share": float((outside & edited).sum() / max(1, outside.sum())),
    }


def temporal_scores(frames: np.ndarray, case: EditCase) -> dict:
    """How smooth an edit is in time (the paper's stated limit of its Tune-A-Video backbone),
    measured against the exact truth; frames (F, H, W, 3) uint8.

      centroid_jitter_px   per edited object, its detected centroid minus its region box's centre
                           on each frame, and the mean length of that offset's second difference
                           over three consecutive frames where the object is found: an object that
                           moves with its box (however far from the centre) scores 0, one that
                           shakes about its path scores its shake in pixels.
      region_change        mean absolute difference of consecutive frames (0–255) inside each
                           region (the union of its boxes on the two frames), over objects and pairs.
      source_region_change the same on the source clip, in the same pixels: the change the motion
                           itself makes. Their ratio is `region_change_ratio` (1: as smooth as
                           the source; a flickering texture or a shaking object is above).
      flicker              per edited object, the fraction of consecutive frame pairs in which it
                           appears or disappears (the detector finds it in one and not the other).
    nan where a measure has nothing to measure (e.g. jitter when no object is found in three
    consecutive frames)."""
    n_f = frames.shape[0]
    colours = [c for c, _ in case.targets]
    found = [detect(image, colours) for image in frames]
    boxes = case.boxes.astype(float)  # (J, F, 4)
    jitter, flicker = [], []
    for j, colour in enumerate(colours):
        seen = [found[f][colour].found for f in range(n_f)]
        if n_f > 1:
            flicker.append(float(np.mean([seen[f] != seen[f + 1] for f in range(n_f - 1)])))
        centre = (boxes[j, :, :2] + boxes[j, :, 2:]) / 2
        offset = [np.asarray(found[f][colour].centroid) - centre[f] if seen[f] else None for f in range(n_f)]
        jitter += [float(np.linalg.norm(offset[f + 1] - 2 * offset[f] + offset[f - 1]))
                   for f in range(1, n_f - 1) if seen[f - 1] and seen[f] and seen[f + 1]]
    change, source_change = [], []
    edit, source = frames.astype(float), case.source.frames.astype(float)
    for j in range(len(colours)):
        for f in range(n_f - 1):
            inside = np.zeros(frames.shape[1:3], bool)
            for g in (f, f + 1):
                x1, y1, x2, y2 = case.boxes[j, g]
                inside[y1:y2, x1:x2] = True
            change.append(float(np.abs(edit[f + 1] - edit[f])[inside].mean()))
            source_change.append(float(np.abs(source[f + 1] - source[f])[inside].mean()))
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    region, src = mean(change), mean(source_change)
    return {"centroid_jitter_px": mean(jitter), "region_change": region, "source_region_change": src,
            "region_change_ratio": region / src if src > 0 else float("nan"), "flicker": mean(flicker)}
