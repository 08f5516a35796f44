"""Anchoring (`rad.anchor_step_ratios`, not in the paper): an object's region latents copied from
the frame that holds it best.

Even with `tracked_noise` (reatco/irjs/region_noise.py), a model may draw an object in most frames and leave single frames' regions empty.
`anchor_object_latents` (`rad.anchor_step_ratios`) copies, at a denoising step, the region's
latents of the frame where the object's word is attended most to every other frame,
moved the same way, so that from that step on every frame develops the object.
"""

from __future__ import annotations

import torch

from ..regions.region import top_left


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
