"""EditObject: one word of interest of an edit, resolved once — its word, which occurrence of it
in the prompt, its region and its prompt token indices — and the one path every object takes to
get there, whatever its region kind (the runner, the pipeline and `pipeline_arguments` use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import ConfigError
from ..tokens import resolve_objects_tokens
from .parsing import parse_region
from .region import Region
from .settings import ObjectConfig, object_settings, region_kind, validate_object


@dataclass(frozen=True)
class EditObject:
    word: str
    occurrence: int | None
    region: Region
    token_indices: tuple[int, ...]


def object_region(obj: ObjectConfig, n_frames: int, height: int, width: int, cell_px: int, field: str = "objects[0]",
                  start_frame: int = 0, frame_stride: int = 1, native_size: tuple[int, int] | None = None) -> Region | None:
    """The region of one object, by its kind: a ready `region` as it is; None for `source` (found
    in the source video with the model: `resolve_objects`' `find_source`, the runner's
    resolve_regions); `box`/`boxes`/`mask`/`boxes_file` parsed for the clip (a boxes file read at
    its `start_frame`/`frame_stride`, in pixels of `native_size`)."""
    kind = region_kind(obj, field)
    if kind == "region":
        return obj.region
    if kind == "source":
        return None
    return parse_region(obj, n_frames, height, width, cell_px, field=field, start_frame=start_frame,
                        frame_stride=frame_stride, native_size=native_size)


def resolve_objects(tokenizer, prompt: str, objects: Sequence, n_frames: int, height: int, width: int, cell_px: int,
                    field: str = "objects", find_source: Callable[[list, list[str]], list[Region]] | None = None
                    ) -> list[EditObject]:
    """Objects as a config or a caller gives them (ObjectConfigs, or dicts of their fields typed here
    by `object_settings`: `word`, optional `occurrence`, and a region: `region` (a Region) or
    `box`/`boxes`/`mask`/`boxes_file`/`source`) → EditObjects. EditObjects pass through unchanged
    (the runner resolves them before the call); the others are checked here (reatco.regions.parsing.parse_region, reatco.tokens), with errors
    naming `{field}[j]`. `find_source(specs, fields)` finds the regions of `source` objects (the
    pipeline's, with its model and the source clip); without it they are refused."""
    if all(isinstance(o, EditObject) for o in objects):
        return list(objects)
    objects = [object_settings(obj, f"{field}[{j}]") for j, obj in enumerate(objects)]
    regions = []
    for j, obj in enumerate(objects):
        validate_object(obj, f"{field}[{j}]")  # as load_config checks a config's objects
        regions.append(object_region(obj, n_frames, height, width, cell_px, field=f"{field}[{j}]"))
    missing = [j for j, region in enumerate(regions) if region is None]
    if missing and find_source is None:
        raise ConfigError(f"{field}[{missing[0]}].source", "a region found in the source video needs the model and the source "
                          "clip: run the edit with EditRunner (scripts/edit.py) or the pipeline with its video, or find it "
                          "with reatco.regions.finding and pass `region=`")
    if missing:
        found = find_source([objects[j].source for j in missing], [f"{field}[{j}].source" for j in missing])
        for j, region in zip(missing, found):
            regions[j] = region
    indices = resolve_objects_tokens(tokenizer, prompt, objects, field) if objects else []
    return [EditObject(o.word, o.occurrence, region, tuple(idx))
            for o, region, idx in zip(objects, regions, indices)]
