"""The start noise in the regions that moves with each object (`sampling.start_in_regions: tracked_noise`).

A start from fresh noise in the regions (`start_in_regions: noise`) draws every frame's noise
independently: each frame of an object is a separate draw, and the model may draw the object in
some frames and leave its region empty in others. `tracked_noise` gives each object one noise
patch and moves it with the object's region (anchored at the region's top-left cell in every
frame), so every frame of the object starts from the same noise, shifted as the object moves —
the noise follows the motion, as the source video's content does.
"""

from __future__ import annotations

import torch

from ..regions.region import top_left


def tracked_noise(object_cells: torch.Tensor, base: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One noise patch per object, moved with its region.

    object_cells (J, F, h, w) bool: each object's latent cells in each frame. base (C, F, h, w):
    the noise kept where no object is. Object j draws one (C, 2h, 2w) standard-normal patch from
    `generator` (on the CPU, like the pipeline's other draws); in frame f its cells take the patch
    at (row − r0 + h, col − c0 + w), (r0, c0) the top-left of its cells in that frame, so a region
    that moves by (dr, dc) between frames carries the same values to the moved cells. A later object
    wins where regions overlap. Returns a new (C, F, h, w) tensor in base's dtype and device."""
    if object_cells.dim() != 4 or base.dim() != 4 or object_cells.shape[1:] != base.shape[1:]:
        raise ValueError(f"object_cells must be (J, F, h, w) and base (C, F, h, w) with the same F, h, w; "
                         f"got {tuple(object_cells.shape)} and {tuple(base.shape)}")
    channels, n_frames, h, w = base.shape
    out = base.clone()
    for cells in object_cells.bool():
        patch = torch.randn((channels, 2 * h, 2 * w), generator=generator, device=torch.device("cpu")).to(base)
        for f in range(n_frames):
            mask = cells[f].to(base.device)
            if not mask.any():
                continue  # the object is not in this frame
            r0, c0 = top_left(mask)
            out[:, f] = torch.where(mask, patch[:, h - r0 : 2 * h - r0, w - c0 : 2 * w - c0], out[:, f])
    return out
