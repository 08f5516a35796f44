"""An object's region from what the user gave (`box`, `boxes`, `mask` or `boxes_file`) → a Region."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from .files import read_boxes_file
from .region import Region, _check_box, _parse_boxes, _parse_mask
from .settings import ObjectConfig, region_kind


def parse_region(obj: ObjectConfig, n_frames: int, height: int, width: int, cell_px: int, field: str = "objects[0]",
                 base_dir: str | None = None, start_frame: int = 0, frame_stride: int = 1,
                 native_size: tuple[int, int] | None = None) -> Region:
    """Validate an object's region (exactly one of `box`, `boxes`, `mask`, `boxes_file`; a dict
    from Python is typed first by regions.settings.object_settings) for a clip of `n_frames` frames at `width`×`height` px; boxes must span at least
    `cell_px` px (one attention cell) each way. Errors are ConfigError naming e.g.
    `edits[0].objects[1].box`. Relative mask and boxes-file paths are taken from `base_dir` when
    given; a boxes file is read at the clip's `start_frame`/`frame_stride`, in pixels of
    `native_size` (see regions/files.py). A `source` region needs the model: EditRunner finds it."""
    kind = region_kind(obj, field)  # the object validator's own check and wording
    value = getattr(obj, kind)
    sub = f"{field}.{kind}"
    if kind == "region":
        raise ConfigError(sub, "is a ready Region: take it as it is (reatco.regions.objects.resolve_objects does)")
    if kind == "source":
        raise ConfigError(sub, "a region found in the source video needs the model and the source clip: run the edit with "
                               "EditRunner (scripts/edit.py), or find it with reatco.regions.finding and pass `region=`")
    if kind == "boxes_file":
        path = os.fspath(value)
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return read_boxes_file(path, n_frames, height, width, cell_px, track=obj.track, start_frame=start_frame,
                               frame_stride=frame_stride, native_size=native_size, field=sub)
    if kind == "box":
        box = _check_box(value, height, width, cell_px, sub)
        return Region("box", n_frames, height, width, boxes=torch.tensor([box], dtype=torch.float64).expand(n_frames, 4).clone())
    if kind == "boxes":
        return Region("boxes", n_frames, height, width, boxes=_parse_boxes(value, n_frames, height, width, cell_px, sub))
    return Region("mask", n_frames, height, width, pixel_masks=_parse_mask(value, n_frames, height, width, sub, base_dir))
