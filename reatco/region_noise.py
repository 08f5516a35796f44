"""Region latents that move with each object: the start noise, and the anchoring step.

A start from fresh noise in the regions (`start_in_regions: noise`) draws every frame's noise
independently: each frame of an object is a separate draw, and the model may draw the object in
some frames and leave its region empty in others. `tracked_noise` gives each object one noise
patch and moves it with the object's region (anchored at the region's top-left cell in every
frame), so every frame of the object starts from the same noise, shifted as the object moves —
the noise follows the motion, as the source video's content does.

Even so, a model may draw an object in most frames and leave single frames' regions empty.
`anchor_object_latents` (`rad.anchor_step_ratios`) copies, at a denoising step, the region's
latents of the frame where the object's word is attended most to every other frame,
moved the same way, so that from that step on every frame develops the object.
"""

from __future__ import annotations

import torch


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


def top_left(cells: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the first row and first column of a non-empty (h, w) bool mask: the
    anchor a region's latents are moved by."""
    return int(cells.any(1).nonzero()[0, 0]), int(cells.any(0).nonzero()[0, 0])


def anchor_object_latents(latents: torch.Tensor, object_cells: torch.Tensor, presence: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Every frame of each object takes its region's latents from the object's anchor frame.

    latents (B, C, F, h, w); object_cells (J, F, h, w) bool, each object's latent cells per
    frame; presence (J, F): how strongly each object is there in each frame (the pipeline's: its
    word's mean cross-attention in its region, `RADGuidance.presence`). Object j's anchor is its
    frame of highest presence among the frames where it has cells. In every other frame f, each
    cell of its region takes the anchor's latent at the same offset from the region's top-left
    cell (as `tracked_noise` moves its patch), where that offset falls inside the anchor's region;
    other cells keep their own values. The anchors' values are read before any copy; objects go in
    order, a later one winning where regions overlap; cells outside every region are never
    touched. Returns (new latents, the anchor frame per object, −1 where the object has no cells)."""
    if object_cells.dim() != 4 or latents.dim() != 5 or object_cells.shape[1:] != latents.shape[2:]:
        raise ValueError(f"object_cells must be (J, F, h, w) and latents (B, C, F, h, w) with the same F, h, w; "
                         f"got {tuple(object_cells.shape)} and {tuple(latents.shape)}")
    if presence.shape != object_cells.shape[:2]:
        raise ValueError(f"presence must be (J, F) = {tuple(object_cells.shape[:2])}, got {tuple(presence.shape)}")
    out = latents.clone()
    h, w = latents.shape[-2:]
    anchors = []
    for cells, strength in zip(object_cells.bool().cpu(), presence.float().cpu()):
        has = cells.flatten(1).any(1)
        if not has.any():
            anchors.append(-1)
            continue
        a = int(torch.where(has, strength, torch.tensor(float("-inf"))).argmax())
        anchors.append(a)
        ra, ca = top_left(cells[a])
        for f in range(cells.shape[0]):
            if f == a or not has[f]:
                continue
            r0, c0 = top_left(cells[f])
            rows, cols = cells[f].nonzero(as_tuple=True)
            src_r, src_c = rows - r0 + ra, cols - c0 + ca
            inside = (src_r >= 0) & (src_r < h) & (src_c >= 0) & (src_c < w)
            rows, cols, src_r, src_c = rows[inside], cols[inside], src_r[inside], src_c[inside]
            keep = cells[a][src_r, src_c]
            rows, cols, src_r, src_c = (v[keep].to(latents.device) for v in (rows, cols, src_r, src_c))
            out[:, :, f, rows, cols] = latents[:, :, a, src_r, src_c]
    return out, anchors
