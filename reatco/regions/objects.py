"""EditObject: one word of interest of an edit, resolved once — its word, which occurrence of it
in the prompt, its region and its prompt token indices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..tokens import resolve_objects_tokens
from .parsing import parse_region
from .region import Region
from .settings import validate_object, value_of


@dataclass(frozen=True)
class EditObject:
    word: str
    occurrence: int | None
    region: Region
    token_indices: tuple[int, ...]


def resolve_objects(tokenizer, prompt: str, objects: Sequence, n_frames: int, height: int, width: int, cell_px: int,
                    field: str = "objects") -> list[EditObject]:
    """Objects as a config or a caller gives them (dicts or config objects with `word`, optional
    `occurrence`, and a region: `region` (a Region) or `box`/`boxes`/`mask`/`boxes_file`) →
    EditObjects. EditObjects pass through unchanged (the runner resolves them before the call);
    the others are checked here (reatco.regions.region.parse_region, reatco.tokens), with errors naming
    `{field}[j]`."""
    if all(isinstance(o, EditObject) for o in objects):
        return list(objects)
    regions = []
    for j, obj in enumerate(objects):
        kind = validate_object(obj, f"{field}[{j}]")  # as load_config checks a config's objects
        region = value_of(obj, "region") if kind == "region" else parse_region(obj, n_frames, height, width, cell_px,
                                                                               field=f"{field}[{j}]")
        regions.append(region)
    indices = resolve_objects_tokens(tokenizer, prompt, objects, field) if objects else []
    return [EditObject(value_of(o, "word"), value_of(o, "occurrence"), region, tuple(idx))
            for o, region, idx in zip(objects, regions, indices)]
