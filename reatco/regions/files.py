"""Regions from files, and every edit's regions written back as a file (`regions.json`).

`boxes_file:` reads per-frame boxes in the formats trackers and this project write:

* JSON
  - `{"boxes": {name: [[x1, y1, x2, y2] per frame]}}` (data/shapes-demo/truth.json), or the
    mapping `{name: [...]}` itself, or a bare list `[[x1, y1, x2, y2] per frame]` (one object);
  - reatco's own `regions.json`: `{"width": W, "height": H, "objects": [{"word": ..., "frames":
    [{"frame": i, "box": [...], "mask": "masks/0/00000.png"}]}]}` (mask files make it a mask
    region again);
  a frame may be `null` (not seen there): such frames are interpolated from their neighbours.
* CSV
  - MOTChallenge rows without a header: `frame, id, left, top, width, height, conf, ...`, frames
    counted from 1;
  - with a header: a `frame` column (counted from 0), an `id` / `object` / `name` / `label`
    column (optional when the file holds one object) and either `x1, y1, x2, y2` or `x, y, w, h`
    (also MOT's `bb_left, bb_top, bb_width, bb_height`).

Frames are the source video's frame numbers: clip frame i reads file frame `start_frame + i ×
frame_stride`. Coordinates are pixels of the size the file states (`width`/`height` in JSON),
otherwise of the source video's own frames, and are scaled to the working resolution.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .finding import grow_boxes
from .region import Region, mask_box, read_mask

_XYXY = ("x1", "y1", "x2", "y2")
_XYWH = (("x", "y", "w", "h"), ("bb_left", "bb_top", "bb_width", "bb_height"), ("left", "top", "width", "height"))
_ID_COLUMNS = ("id", "object", "name", "label", "track", "track_id")


def _parse_json(path: Path, field: str) -> tuple[dict[str, dict[int, Any]], tuple[int, int] | None]:
    """→ ({object name: {file frame: box or {"box", "mask"}}}, (width, height) or None)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(field, f"cannot read {path} as JSON: {err}") from err
    size = None
    if isinstance(data, dict) and "width" in data and "height" in data:
        size = (int(data["width"]), int(data["height"]))
    objects: dict[str, dict[int, Any]] = {}
    if isinstance(data, list):
        objects["0"] = dict(enumerate(data))
    elif isinstance(data, dict) and isinstance(data.get("objects"), list) and data["objects"] and isinstance(data["objects"][0], dict):
        for k, obj in enumerate(data["objects"]):  # reatco's regions.json
            name = str(obj.get("word", obj.get("name", k)))
            entry = {}
            for item in obj.get("frames", []):
                entry[int(item["frame"])] = {"box": item.get("box"), "mask": item.get("mask")}
            objects[name] = entry
            objects.setdefault(str(k), entry)
    else:
        table = data.get("boxes", data) if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise ConfigError(field, f"{path}: expected {{\"boxes\": {{name: [box per frame]}}}}, {{name: [...]}}, a list of boxes "
                                     "or a reatco regions.json")
        for name, boxes in table.items():
            if isinstance(boxes, list):
                objects[str(name)] = dict(enumerate(boxes))
            elif isinstance(boxes, dict):
                objects[str(name)] = {int(k): v for k, v in boxes.items()}
    return objects, size


def _parse_csv(path: Path, field: str) -> dict[str, dict[int, Any]]:
    try:
        rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    except (OSError, csv.Error) as err:
        raise ConfigError(field, f"cannot read {path} as CSV: {err}") from err
    if not rows:
        raise ConfigError(field, f"{path} is empty")
    objects: dict[str, dict[int, Any]] = {}

    def number(text: str, where: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(field, f"{path}, {where}: {text!r} is not a number") from None

    header = [c.strip().lower() for c in rows[0]]
    if all(_is_number(c) for c in header):  # MOTChallenge: frame (1-based), id, left, top, width, height, ...
        for n, row in enumerate(rows, 1):
            if len(row) < 6:
                raise ConfigError(field, f"{path}, line {n}: a MOT row is frame, id, left, top, width, height[, ...]")
            frame, ident, x, y, w, h = (number(c, f"line {n}") for c in row[:6])
            objects.setdefault(_name(ident), {})[int(frame) - 1] = [x, y, x + w, y + h]
        return objects
    if "frame" not in header:
        raise ConfigError(field, f"{path}: the header needs a `frame` column (or give MOT rows without a header)")
    col = {name: header.index(name) for name in header}
    id_col = next((col[c] for c in _ID_COLUMNS if c in col), None)
    if all(c in col for c in _XYXY):
        def box(r, w):
            return [number(r[col[c]], w) for c in _XYXY]
    else:
        names = next((names for names in _XYWH if all(c in col for c in names)), None)
        if names is None:
            raise ConfigError(field, f"{path}: the header needs x1, y1, x2, y2 or x, y, w, h columns, got {header}")

        def box(r, w):
            x, y, bw, bh = (number(r[col[c]], w) for c in names)
            return [x, y, x + bw, y + bh]
    for n, row in enumerate(rows[1:], 2):
        where = f"line {n}"
        name = _name(row[id_col]) if id_col is not None else "0"
        objects.setdefault(name, {})[int(number(row[col["frame"]], where))] = box(row, where)
    return objects


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _name(value) -> str:
    """Track ids 3 and 3.0 name the same object."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return str(int(float(text))) if _is_number(text) and float(text).is_integer() else text


def read_boxes_file(path, n_frames: int, height: int, width: int, cell_px: int = 1, track=None, start_frame: int = 0,
                    frame_stride: int = 1, native_size: tuple[int, int] | None = None, field: str = "boxes_file") -> Region:
    """The region of one object of a boxes file (see the module doc) for the clip's frames.

    `track`: the object's name or id in the file (optional when it holds one object).
    `native_size`: (width, height) of the source video's own frames, the unit of files that do
    not state their size (None: the working size). Boxes smaller than `cell_px` grow to it."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise ConfigError(field, f"{path} does not exist (a JSON or CSV of per-frame boxes)")
    if path.suffix.lower() == ".csv":
        objects, size = _parse_csv(path, field), None
    else:
        objects, size = _parse_json(path, field)
    if not objects:
        raise ConfigError(field, f"{path} holds no objects")
    names = list(dict.fromkeys(objects))
    if track is None:
        distinct = {id(v) for v in objects.values()}
        if len(distinct) != 1:
            raise ConfigError(field, f"{path} holds {len(distinct)} objects ({', '.join(names)}): name one with `track:`")
        entries = next(iter(objects.values()))
    else:
        key = _name(track)
        if key not in objects:
            raise ConfigError(field.rsplit(".", 1)[0] + ".track", f"{track!r} is not an object of {path}; it has {', '.join(names)}")
        entries = objects[key]
    size = size or native_size or (width, height)
    sx, sy = width / size[0], height / size[1]
    wanted = [start_frame + i * frame_stride for i in range(n_frames)]
    boxes = np.full((n_frames, 4), np.nan)
    masks: list[str | None] = [None] * n_frames
    for i, frame in enumerate(wanted):
        item = entries.get(frame)
        if isinstance(item, dict):
            masks[i] = item.get("mask")
            item = item.get("box")
        if item is None:
            continue
        if not (isinstance(item, (list, tuple)) and len(item) == 4 and all(_finite(v) for v in item)):
            raise ConfigError(field, f"{path}, frame {frame}: a box is [x1, y1, x2, y2] (4 finite numbers), got {item!r}")
        x1, y1, x2, y2 = (float(v) for v in item)
        if x2 <= x1 or y2 <= y1:
            raise ConfigError(field, f"{path}, frame {frame}: box {item!r} is empty or inverted (need x1 < x2, y1 < y2)")
        boxes[i] = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    seen = ~np.isnan(boxes[:, 0])
    if not seen.any():
        raise ConfigError(field, f"{path} has no box for the clip's frames {wanted[0]}…{wanted[-1]} "
                                 f"(frames are the source video's frame numbers; MOT rows count from 1)")
    if all(m is not None for m in masks):
        return _mask_region(path.parent, masks, n_frames, height, width, field)
    for c in range(4):  # frames the file skips: linear interpolation, held at the ends
        boxes[:, c] = np.interp(np.arange(n_frames), np.nonzero(seen)[0], boxes[seen, c])
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    boxes = grow_boxes(boxes, 0.0, cell_px, height, width)
    return Region("boxes", n_frames, height, width, boxes=torch.from_numpy(boxes))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mask_region(folder: Path, files: Sequence[str], n_frames: int, height: int, width: int, field: str) -> Region:
    masks = torch.stack([read_mask(str(folder / f), height, width, field) for f in files])
    if not masks.any():
        raise ConfigError(field, "the mask files are empty: no white pixels")
    return Region("mask", n_frames, height, width, pixel_masks=masks)


# ----------------------------------------------------------------------------- writing


def regions_document(regions: Sequence[Region], words: Sequence[str], origins: Sequence[str] | None = None,
                     mask_files: Sequence[Sequence[str] | None] | None = None,
                     frame_numbers: Sequence[int] | None = None) -> dict:
    """The `regions.json` document: per object, per frame (numbered as the source video's frames,
    `frame_numbers`, default 0, 1, …), its box in pixels of the working resolution (a mask
    region's tight box) and, for mask regions, the mask file."""
    objects = []
    for j, (region, word) in enumerate(zip(regions, words)):
        frames = []
        for f in range(region.n_frames):
            if region.boxes is not None:
                box = [round(float(v), 3) for v in region.boxes[f]]
            else:
                box = [int(v) for v in mask_box(region.pixel_masks[f].numpy())]
            item: dict[str, Any] = {"frame": int(frame_numbers[f]) if frame_numbers is not None else f, "box": box}
            if mask_files is not None and mask_files[j] is not None:
                item["mask"] = mask_files[j][f]
            frames.append(item)
        objects.append({"word": word, "kind": region.kind, "source": origins[j] if origins else region.kind, "frames": frames})
    first = regions[0] if regions else None
    return {
        "width": first.width if first else None,
        "height": first.height if first else None,
        "n_frames": first.n_frames if first else 0,
        "note": "boxes are [x1, y1, x2, y2] pixels of width x height (x2, y2 exclusive); frames are the source video's "
                "frame numbers; reusable as an object's boxes_file with track: <word>",
        "objects": objects,
    }


def write_regions(folder, regions: Sequence[Region], words: Sequence[str], origins: Sequence[str] | None = None,
                  frame_numbers: Sequence[int] | None = None) -> Path:
    """Write `regions.json` (and `masks/<j>/<frame>.png` for mask regions) into `folder`."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mask_files: list[list[str] | None] = []
    for j, region in enumerate(regions):
        if region.pixel_masks is None:
            mask_files.append(None)
            continue
        names = []
        (folder / "masks" / str(j)).mkdir(parents=True, exist_ok=True)
        for f, mask in enumerate(region.pixel_masks):
            name = f"masks/{j}/{f:05d}.png"
            Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(folder / name)
            names.append(name)
        mask_files.append(names)
    path = folder / "regions.json"
    path.write_text(json.dumps(regions_document(regions, words, origins, mask_files, frame_numbers), indent=1))
    return path
