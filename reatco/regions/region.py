"""Where each object must appear: boxes (static, per frame, keyframed) or mask files → masks on any grid.

Coordinates are pixels of the working resolution (the size the video is resized to), `[x1, y1, x2,
y2]` with x to the right and y down; a box covers the continuous rectangle [x1, x2) × [y1, y2).

Grid rules (the same for the attention grid, the latent grid or any other). x is scaled by
grid_w / width and y by grid_h / height (the official code scaled both by the height ratio, which
is wrong for frames whose sides are not the same multiple of the cell; at 448×768 and 32 px both
ratios are 32, so the paper's demos are unaffected).
  * boxes, "round" (default, official): each coordinate goes to round(b / cell) with Python's
    round (half to even), as the official `round(b / (height / h))` — rows y1'…y2'−1 and columns
    x1'…x2'−1;
  * boxes, "coverage": the rows and the columns the box covers at least half of. The two agree
    except where a box edge lies exactly half-way across a cell (on the paper's boxes, only the
    hares' y1 = 240 at 32 px: 18 cells against 24);
  * masks: a cell belongs to the region when the region covers at least half of its area.
So that a small region never vanishes, a box always keeps the cell holding its centre on an axis
left empty, and a mask frame that has white pixels but no half-covered cell keeps its
most-covered cell(s).
"""

from __future__ import annotations

import logging

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PALETTE = [(255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (220, 80, 255), (0, 220, 220), (255, 128, 0), (255, 255, 255)]


@dataclass(frozen=True, eq=False)  # holds tensors: compare regions by identity
class Region:
    """A validated region for every frame of the clip.

    kind: "box" | "boxes" | "mask"; boxes: (F, 4) float64 pixels (box kinds); pixel_masks: (F, H, W)
    bool at the working resolution (mask kind)."""

    kind: str
    n_frames: int
    height: int
    width: int
    boxes: torch.Tensor | None = None
    pixel_masks: torch.Tensor | None = None

    def boxes_px(self) -> torch.Tensor | None:
        """(F, 4) boxes in pixels, or None for a mask region."""
        return None if self.boxes is None else self.boxes.clone()

    def masks(self, n_frames: int, grid_h: int, grid_w: int, box_grid: str = "round") -> torch.Tensor:
        """(F, grid_h, grid_w) float32 in {0, 1} by the grid rules of this module (`box_grid`:
        "round" or "coverage", for boxes)."""
        if n_frames != self.n_frames and self.kind != "box":
            raise ValueError(f"this {self.kind} region was given for {self.n_frames} frames, not {n_frames}")
        if self.kind == "mask":
            return _mask_to_grid(self.pixel_masks, grid_h, grid_w)
        if self.kind == "box":  # the same box every frame, for any frame count
            one = _box_to_grid(self.boxes[0].tolist(), self.height, self.width, grid_h, grid_w, box_grid)
            return one.expand(n_frames, grid_h, grid_w).clone()
        return torch.stack([_box_to_grid(b.tolist(), self.height, self.width, grid_h, grid_w, box_grid) for b in self.boxes])


# ----------------------------------------------------------------------------- grid rasterisation


def _coverage(lo: float, hi: float, size: float, cells: int) -> torch.Tensor:
    """Fraction of each of `cells` equal cells of [0, size) covered by the interval [lo, hi)."""
    step = size / cells
    edges = torch.arange(cells + 1, dtype=torch.float64) * step
    overlap = (torch.clamp(edges[1:], max=hi) - torch.clamp(edges[:-1], min=lo)).clamp(min=0)
    return overlap / step


def _rounded_cells(lo: float, hi: float, size: int, cells: int) -> torch.Tensor:
    """Cells round(lo / cell) … round(hi / cell) − 1 (Python round: half to even), clamped to the
    grid — the official rounding of one axis of a box."""
    cell = size / cells
    first, last = max(round(lo / cell), 0), min(round(hi / cell), cells)
    picked = torch.zeros(cells, dtype=torch.bool)
    picked[first:max(last, first)] = True
    return picked


def _box_to_grid(box: Sequence[float], height: int, width: int, grid_h: int, grid_w: int, rule: str = "round") -> torch.Tensor:
    """A box stays a rectangle of cells: rows × columns picked per axis by `rule` ("round" or
    "coverage", see the module docstring). Along an axis left empty, the cell holding the box
    centre is kept, so a box smaller than a cell is never lost (the official code gets an empty
    mask and a NaN loss there)."""
    x1, y1, x2, y2 = box
    if rule == "round":
        rows, cols = _rounded_cells(y1, y2, height, grid_h), _rounded_cells(x1, x2, width, grid_w)
    elif rule == "coverage":
        rows = _coverage(y1, y2, height, grid_h) >= 0.5 - 1e-9
        cols = _coverage(x1, x2, width, grid_w) >= 0.5 - 1e-9
    else:
        raise ConfigError("rad.box_grid", f"must be round or coverage, got {rule!r}")
    if not rows.any():
        rows[min(int(((y1 + y2) / 2) * grid_h / height), grid_h - 1)] = True
    if not cols.any():
        cols[min(int(((x1 + x2) / 2) * grid_w / width), grid_w - 1)] = True
    return torch.outer(rows, cols).float()


def _pixel_weights(size: int, cells: int) -> torch.Tensor:
    """(cells, size) weights: cover[r] = Σ_p W[r, p]·m[p] is the fraction of cell r that is white."""
    step = size / cells
    edges = torch.arange(cells + 1, dtype=torch.float64) * step
    pix = torch.arange(size, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:, None], pix[None] + 1) - torch.maximum(edges[:-1, None], pix[None])).clamp(min=0)
    return overlap / step


def _mask_to_grid(pixel_masks: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Exact area average of each (H, W) frame onto the grid, then ≥ 0.5 (any ratio, not only integer)."""
    _, height, width = pixel_masks.shape
    wy, wx = _pixel_weights(height, grid_h), _pixel_weights(width, grid_w)
    cover = torch.einsum("rh,fhw,cw->frc", wy, pixel_masks.double(), wx)
    mask = cover >= 0.5 - 1e-9
    for f in range(cover.shape[0]):
        if not mask[f].any() and cover[f].max() > 0:  # white pixels but no half-covered cell
            mask[f] = cover[f] >= cover[f].max() - 1e-12
    return mask.float()


# ----------------------------------------------------------------------------- parsing and validation


def _plain(value):
    """OmegaConf containers → plain Python, so that list/dict checks work on either."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def _check_box(box, height: int, width: int, cell_px: int, field: str) -> list[float]:
    box = _plain(box)
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        n = len(box) if isinstance(box, (list, tuple)) else "not a list"
        raise ConfigError(field, f"a box is [x1, y1, x2, y2] (4 numbers, pixels at {width}×{height}), got {box!r} ({n})")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in box):
        raise ConfigError(field, f"box coordinates must be finite numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ConfigError(field, f"box {box!r} is empty or inverted: need x1 < x2 and y1 < y2 ([x1, y1, x2, y2], not [x, y, w, h])")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise ConfigError(
            field, f"box {box!r} is outside the {width}×{height} frame (x in [0, {width}], y in [0, {height}]); "
                   f"boxes are in pixels of the working resolution (video.width × video.height)"
        )
    if x2 - x1 < cell_px or y2 - y1 < cell_px:
        raise ConfigError(
            field, f"box {box!r} is {x2 - x1:g}×{y2 - y1:g} px, smaller than one attention cell; "
                   f"each side must be at least {cell_px} px"
        )
    return [x1, y1, x2, y2]


def _frame_key(key, field: str) -> int:
    if isinstance(key, bool):
        raise ConfigError(field, f"keyframe index must be an integer frame number, got {key!r}")
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    if isinstance(key, int):
        return key
    raise ConfigError(field, f"keyframe index must be an integer frame number, got {key!r}")


def _parse_boxes(boxes, n_frames: int, height: int, width: int, cell_px: int, field: str) -> torch.Tensor:
    boxes = _plain(boxes)
    if isinstance(boxes, dict):
        if not boxes:
            raise ConfigError(field, "give at least one keyframe {frame: [x1, y1, x2, y2]}")
        keys = {}
        for key, box in boxes.items():
            k = _frame_key(key, f"{field}[{key}]")
            if not 0 <= k < n_frames:
                raise ConfigError(f"{field}[{key}]", f"keyframe {k} is outside the clip: frames are 0…{n_frames - 1}")
            if k in keys:
                raise ConfigError(f"{field}[{key}]", f"keyframe {k} is given twice")
            keys[k] = _check_box(box, height, width, cell_px, f"{field}[{key}]")
        return interpolate_keyframes(keys, n_frames)
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != n_frames:
            raise ConfigError(
                field, f"{len(boxes)} boxes for a clip of {n_frames} frames: give exactly one box per frame, "
                       f"or a mapping {{frame: box}} of keyframes, or a single `box`"
            )
        return torch.tensor([_check_box(b, height, width, cell_px, f"{field}[{i}]") for i, b in enumerate(boxes)], dtype=torch.float64)
    raise ConfigError(field, f"`boxes` is a list with one box per frame or a mapping {{frame: box}} of keyframes, got {boxes!r}")


def interpolate_keyframes(keys: dict[int, list[float]], n_frames: int) -> torch.Tensor:
    """Linear interpolation of coordinates between keyframes; held before the first / after the last."""
    frames = sorted(keys)
    known = torch.tensor([keys[k] for k in frames], dtype=torch.float64)
    out = torch.empty(n_frames, 4, dtype=torch.float64)
    for f in range(n_frames):
        if f <= frames[0]:
            out[f] = known[0]
        elif f >= frames[-1]:
            out[f] = known[-1]
        else:
            i = next(n for n in range(len(frames)) if frames[n + 1] >= f)
            w = (f - frames[i]) / (frames[i + 1] - frames[i])
            out[f] = known[i] * (1 - w) + known[i + 1] * w
    return out


def read_mask(path: str, height: int, width: int, field: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            w, h = image.size
            gray = image.convert("L").resize((width, height), Image.BILINEAR)
    except (OSError, ValueError) as err:
        raise ConfigError(field, f"cannot read the mask image {path}: {err}") from err
    if abs(w / h - width / height) > 0.01 * width / height:
        # Right when the mask was drawn on source frames of that shape (they are stretched alike);
        # a mask drawn at another shape ends up stretched off its object.
        logger.warning("%s: mask %s is %d×%d, another aspect ratio than the working size %d×%d; it is stretched to "
                       "it like the video frames (draw masks on the source frames or at the working size)",
                       field, path, w, h, width, height)
    return torch.from_numpy(np.asarray(gray) >= 128)  # white = object


def _parse_mask(mask, n_frames: int, height: int, width: int, field: str, base_dir: str | None) -> torch.Tensor:
    if not isinstance(mask, (str, os.PathLike)):
        raise ConfigError(field, f"`mask` is the path of a PNG or of a folder of per-frame PNGs, got {mask!r}")
    path = os.fspath(mask)
    if base_dir is not None and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(_IMAGE_EXTS))
        if len(files) != n_frames:
            raise ConfigError(field, f"{path} holds {len(files)} mask images for a clip of {n_frames} frames: give one per frame (sorted by name)")
        masks = torch.stack([read_mask(os.path.join(path, f), height, width, field) for f in files])
    elif os.path.isfile(path):
        masks = read_mask(path, height, width, field).expand(n_frames, height, width).clone()
    else:
        raise ConfigError(field, f"mask {path} does not exist (a PNG, or a folder of per-frame PNGs; white = object)")
    if not masks.any():
        raise ConfigError(field, f"mask {path} is empty: no white pixels (white = object)")
    return masks


# ----------------------------------------------------------------------------- several objects


def object_masks(regions: Sequence[Region], n_frames: int, grid_h: int, grid_w: int, box_grid: str = "round") -> torch.Tensor:
    """(J, F, grid_h, grid_w) masks of every object, float in {0, 1} (`box_grid`: how boxes snap)."""
    if not regions:
        return torch.zeros(0, n_frames, grid_h, grid_w)
    return torch.stack([r.masks(n_frames, grid_h, grid_w, box_grid) for r in regions])


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box x1, y1, x2, y2 (exclusive) of an (H, W) boolean mask; zeros when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4, int)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], int)


def union_mask(masks: torch.Tensor) -> torch.Tensor:
    """(J, F, h, w) → (F, h, w): 1 where any object's region is (the editable part for IRJS)."""
    return masks.amax(dim=0)


def draw_regions(image: np.ndarray, regions: Sequence[Region], labels: Sequence[str], frame: int = 0) -> np.ndarray:
    """The regions of `frame` drawn on an (H, W, 3) uint8 image: coloured box outlines or mask
    contours, each with its word (None: the outline only). Coordinates are rescaled when the image is
    not at the working size."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    img_w, img_h = canvas.size
    line = max(2, round(min(img_w, img_h) / 200))
    try:  # Pillow's default font, scaled with the image when FreeType is available
        font = ImageFont.load_default(size=max(11, img_h // 28))
    except (TypeError, OSError, ImportError):
        font = ImageFont.load_default()
    for j, (region, label) in enumerate(zip(regions, labels)):
        colour = PALETTE[j % len(PALETTE)]
        sx, sy = img_w / region.width, img_h / region.height
        if region.boxes is not None:
            x1, y1, x2, y2 = region.boxes[frame].tolist()
            x1, y1, x2, y2 = x1 * sx, y1 * sy, x2 * sx, y2 * sy
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=line)
        else:
            m = region.pixel_masks[frame].float()[None, None]
            m = torch.nn.functional.interpolate(m, size=(img_h, img_w), mode="nearest")[0, 0] > 0.5
            inner = -torch.nn.functional.max_pool2d(-m.float()[None, None], 2 * line + 1, 1, line)[0, 0] > 0.5
            edge = (m & ~inner).numpy()
            pixels = np.asarray(canvas).copy()
            pixels[edge] = colour
            canvas = Image.fromarray(pixels)
            draw = ImageDraw.Draw(canvas)
            ys, xs = np.nonzero(m.numpy())
            x1, y1 = (float(xs.min()), float(ys.min())) if len(xs) else (0.0, 0.0)
        if label is None:  # outline only (regions_sheet puts the words in a legend)
            continue
        text_box = draw.textbbox((x1 + line + 2, y1 + line + 1), str(label), font=font)
        draw.rectangle([text_box[0] - 2, text_box[1] - 1, text_box[2] + 2, text_box[3] + 1], fill=colour)
        draw.text((x1 + line + 2, y1 + line + 1), str(label), fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def top_left(cells: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the first row and first column of a non-empty (h, w) bool mask: the
    anchor a region's latents are moved by."""
    return int(cells.any(1).nonzero()[0, 0]), int(cells.any(0).nonzero()[0, 0])
