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
from ..schema import short
from .finding import grow_boxes
from .region import Region, mask_box, read_mask

_XYXY = ("x1", "y1", "x2", "y2")
_XYWH = (("x", "y", "w", "h"), ("bb_left", "bb_top", "bb_width", "bb_height"), ("left", "top", "width", "height"))
_ID_COLUMNS = ("id", "object", "name", "label", "track", "track_id")
# A boxes file is a few kilobytes per object and frame; anything far larger is not one.
MAX_FILE_BYTES = 64 * 2**20
# Frame numbers of a video: anything beyond is a typo or a hostile file.
MAX_FRAME = 10**7


def read_text_file(path: Path, field: str, what: str, max_bytes: int = MAX_FILE_BYTES) -> str:
    """An untrusted text file: a regular file of at most `max_bytes`, UTF-8 (a BOM is allowed),
    else a ConfigError naming the file and the fix."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(field, f"{path} is {size / 2**20:.1f} MiB, more than a {what} can be "
                                     f"({max_bytes // 2**20} MiB); is it the right file?")
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(field, f"cannot read {path}: {err.strerror or err}") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(field, f"{path}, line {line}: not UTF-8 text (byte {data[err.start]:#04x} at offset "
                                 f"{err.start}); save the {what} as UTF-8") from None


def _frame_number(value, where: str, field: str, path: Path) -> int:
    """A frame number: a whole number ≥ 0 (JSON keys and CSV cells are text: '7' and 7.0 too)."""
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(field, f"{path}, {where}: frame {value!r} is not a whole number") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ConfigError(field, f"{path}, {where}: frame {value!r} is not a whole number")
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise ConfigError(field, f"{path}, {where}: frame {value!r} is not a whole number")
        number = int(number)
    if not 0 <= number <= MAX_FRAME:
        raise ConfigError(field, f"{path}, {where}: frame {number} is out of range (frames are numbered from 0, "
                                 f"MOT rows from 1)")
    return number


def _json_box(item, where: str, field: str, path: Path):
    """A JSON box: null (not seen there) or 4 finite numbers."""
    if item is None:
        return None
    if not (isinstance(item, list) and len(item) == 4 and all(_finite(v) for v in item)):
        raise ConfigError(field, f"{path}, {where}: a box is [x1, y1, x2, y2] (4 finite numbers) or null, got {short(item, 80)}")
    return [float(v) for v in item]


def _size(data: dict, field: str, path: Path) -> tuple[int, int] | None:
    """The `width`/`height` a JSON states: both or neither, whole numbers ≥ 1."""
    if "width" not in data and "height" not in data:
        return None
    out = []
    for key in ("width", "height"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or float(value) != int(value) or not 1 <= value <= 2**16:
            raise ConfigError(field, f"{path}: `{key}` must be the frames' size in pixels (a whole number ≥ 1) "
                                     f"that the boxes are given in, got {short(value, 80)}; or leave out width and height")
        out.append(int(value))
    return out[0], out[1]


def _parse_json(path: Path, field: str) -> tuple[dict[str, dict[int, Any]], tuple[int, int] | None]:
    """→ ({object name: {file frame: box or {"box", "mask"}}}, (width, height) or None)."""
    text = read_text_file(path, field, "boxes file")
    try:
        data = json.loads(text, parse_constant=lambda c: float(c))
    except ValueError as err:
        raise ConfigError(field, f"{path}: not valid JSON: {err}") from err
    size = _size(data, field, path) if isinstance(data, dict) else None
    objects: dict[str, dict[int, Any]] = {}
    if isinstance(data, list):
        objects["0"] = {f: _json_box(b, f"frame {f}", field, path) for f, b in enumerate(data)}
    elif isinstance(data, dict) and "objects" in data and "boxes" not in data:  # reatco's regions.json
        if not isinstance(data["objects"], list) or not data["objects"]:
            raise ConfigError(field, f"{path}: `objects` must be a non-empty list of {{word, frames: [{{frame, box}}]}}")
        for k, obj in enumerate(data["objects"]):
            where = f"objects[{k}]"
            if not isinstance(obj, dict) or not isinstance(obj.get("frames"), list):
                raise ConfigError(field, f"{path}, {where}: an object is {{\"word\": ..., \"frames\": [{{\"frame\": i, \"box\": [...]}}]}}, "
                                         f"got {short(obj, 80)}")
            entry: dict[int, Any] = {}
            for n, item in enumerate(obj["frames"]):
                at = f"{where}.frames[{n}]"
                if not isinstance(item, dict) or "frame" not in item:
                    raise ConfigError(field, f"{path}, {at}: each frame entry is {{\"frame\": i, \"box\": [x1, y1, x2, y2]"
                                             f"[, \"mask\": \"masks/...png\"]}}, got {short(item, 80)}")
                frame = _frame_number(item["frame"], at, field, path)
                if frame in entry:
                    raise ConfigError(field, f"{path}, {at}: frame {frame} is given twice")
                mask = item.get("mask")
                if mask is not None and not isinstance(mask, str):
                    raise ConfigError(field, f"{path}, {at}: `mask` is a PNG path inside the file's folder, got {short(mask, 80)}")
                entry[frame] = {"box": _json_box(item.get("box"), at, field, path), "mask": mask}
            name = obj.get("word", obj.get("name", k))
            objects[_name(name) if isinstance(name, (str, int, float)) and not isinstance(name, bool) else str(k)] = entry
            objects.setdefault(str(k), entry)
    else:
        table = data.get("boxes", data) if isinstance(data, dict) else None
        if not isinstance(table, dict) or not table:
            raise ConfigError(field, f"{path}: expected {{\"boxes\": {{name: [box per frame]}}}}, {{name: [...]}}, a list of boxes "
                                     "or a reatco regions.json")
        for name, boxes in table.items():
            if name in ("width", "height") and table is data:
                continue
            if isinstance(boxes, list):
                objects[_name(name)] = {f: _json_box(b, f"{name}[{f}]", field, path) for f, b in enumerate(boxes)}
            elif isinstance(boxes, dict):
                objects[_name(name)] = {_frame_number(k, f"{name}, key {k!r}", field, path): _json_box(v, f"{name}[{k}]", field, path)
                                        for k, v in boxes.items()}
            else:
                raise ConfigError(field, f"{path}, {name}: an object's boxes are a list (one per frame) or a mapping "
                                         f"{{frame: box}}, got {short(boxes, 80)}")
    return objects, size


def _parse_csv(path: Path, field: str) -> dict[str, dict[int, Any]]:
    text = read_text_file(path, field, "boxes CSV")
    try:
        rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), 1) if r and any(c.strip() for c in r)]
    except csv.Error as err:
        raise ConfigError(field, f"cannot read {path} as CSV: {err}") from err
    if not rows:
        raise ConfigError(field, f"{path} is empty")
    objects: dict[str, dict[int, Any]] = {}

    def number(text: str, where: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(field, f"{path}, {where}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(field, f"{path}, {where}: {text!r} is not a finite number")
        return value

    def put(name: str, frame: int, box, where: str) -> None:
        entry = objects.setdefault(name, {})
        if frame in entry:
            raise ConfigError(field, f"{path}, {where}: object {name!r} has a second box for frame {frame}")
        entry[frame] = box

    header = [c.strip().lower() for c in rows[0][1]]
    if all(_is_number(c) for c in header):  # MOTChallenge: frame (1-based), id, left, top, width, height, ...
        for n, row in rows:
            where = f"line {n}"
            if len(row) < 6:
                raise ConfigError(field, f"{path}, {where}: a MOT row is frame, id, left, top, width, height[, ...], "
                                         f"got {len(row)} values")
            frame = _frame_number(row[0], where, field, path)
            if frame < 1:
                raise ConfigError(field, f"{path}, {where}: MOT frames count from 1, got {frame}")
            ident = number(row[1], where)
            x, y, w, h = (number(c, where) for c in row[2:6])
            put(_name(ident), frame - 1, [x, y, x + w, y + h], where)
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
    needed = max(col.values()) + 1
    for n, row in rows[1:]:
        where = f"line {n}"
        if len(row) < needed:
            raise ConfigError(field, f"{path}, {where}: {len(row)} values for a header of {len(header)} columns; "
                                     "every row needs a value in each column")
        name = _name(row[id_col]) if id_col is not None else "0"
        put(name, _frame_number(row[col["frame"]], where, field, path), box(row, where), where)
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
    return str(int(float(text))) if _is_number(text) and math.isfinite(float(text)) and float(text).is_integer() else text


def read_boxes_file(path, n_frames: int, height: int, width: int, cell_px: int = 1, track=None, start_frame: int = 0,
                    frame_stride: int = 1, native_size: tuple[int, int] | None = None, field: str = "boxes_file") -> Region:
    """The region of one object of a boxes file (see the module doc) for the clip's frames.

    `track`: the object's name or id in the file (optional when it holds one object).
    `native_size`: (width, height) of the source video's own frames, the unit of files that do
    not state their size (None: the working size). Boxes smaller than `cell_px` grow to it; a box
    outside the frame is refused, as a typed one is. Mask files of a regions.json are read only
    from inside the file's folder."""
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
    unit = size or native_size or (width, height)
    sx, sy = width / unit[0], height / unit[1]
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
        x1, y1, x2, y2 = item
        if x2 <= x1 or y2 <= y1:
            raise ConfigError(field, f"{path}, frame {frame}: box {item!r} is empty or inverted (need x1 < x2, y1 < y2)")
        if x1 < 0 or y1 < 0 or x2 > unit[0] or y2 > unit[1]:  # as a typed box outside the frame is refused
            raise ConfigError(field, f"{path}, frame {frame}: box {item!r} is outside the {unit[0]}×{unit[1]} frame "
                                     f"(x in [0, {unit[0]}], y in [0, {unit[1]}]) that the file's boxes are in"
                                     f"{'' if size else ' (the source video’s own size)'}; fix the box, or state the "
                                     "file's width and height")
        boxes[i] = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    seen = ~np.isnan(boxes[:, 0])
    if not seen.any():
        raise ConfigError(field, f"{path} has no box for the clip's frames {wanted[0]}…{wanted[-1]} "
                                 f"(frames are the source video's frame numbers; MOT rows count from 1)")
    if all(m is not None for m in masks):
        return _mask_region(path.parent, masks, n_frames, height, width, field)
    for c in range(4):  # frames the file skips: linear interpolation, held at the ends
        boxes[:, c] = np.interp(np.arange(n_frames), np.nonzero(seen)[0], boxes[seen, c])
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)  # float rounding of the scaling only
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    boxes = grow_boxes(boxes, 0.0, cell_px, height, width)
    return Region("boxes", n_frames, height, width, boxes=torch.from_numpy(boxes))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def inside_folder(folder: Path, name: str, field: str, what: str) -> Path:
    """`name` (a path a file gives) as a file inside `folder`: relative, no `..` out, no
    symlink out; else a ConfigError. Untrusted files never make us open anything else."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigError(field, f"{what} {short(name, 80)} is not a file name")
    if os.path.isabs(name) or name.startswith(("~", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ConfigError(field, f"{what} {name!r} is an absolute path; it must be relative to {folder} and inside it")
    root = folder.resolve()
    target = (folder / name).resolve()
    if target != root and root not in target.parents:
        raise ConfigError(field, f"{what} {name!r} leads outside {folder} (through `..` or a link); files it names must "
                                 "lie inside its folder")
    return target


def _mask_region(folder: Path, files: Sequence[str], n_frames: int, height: int, width: int, field: str) -> Region:
    paths = [inside_folder(folder, f, field, "mask") for f in files]
    masks = torch.stack([read_mask(str(p), height, width, field) for p in paths])
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
