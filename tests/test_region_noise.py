"""tracked_noise: one noise patch per object, moved with its region; anchor_object_latents: every
frame of an object from its best-attended frame, moved the same way."""

import pytest
import torch

from reatco.irjs.region_noise import tracked_noise
from reatco.rad.anchoring import anchor_object_latents


def _box_cells(boxes, n_frames=3, size=12):
    """(F, h, w) bool cells of a box per frame, boxes as (row0, col0, row1, col1) exclusive."""
    cells = torch.zeros(n_frames, size, size, dtype=torch.bool)
    for f, box in enumerate(boxes):
        if box is not None:
            r0, c0, r1, c1 = box
            cells[f, r0:r1, c0:c1] = True
    return cells


def test_the_patch_moves_with_the_region():
    # a 3×4 box moving by (+2 rows, +1 col), then (−3 rows, +4 cols)
    boxes = [(2, 3, 5, 7), (4, 4, 7, 8), (1, 8, 4, 12)]
    cells = _box_cells(boxes)[None]
    base = torch.zeros(4, 3, 12, 12)
    out = tracked_noise(cells, base, torch.Generator().manual_seed(0))
    first = out[:, 0, 2:5, 3:7]
    assert first.abs().min() > 0  # drawn noise, not the base
    torch.testing.assert_close(out[:, 1, 4:7, 4:8], first, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2, 1:4, 8:12], first, rtol=0, atol=0)
    assert torch.equal(out[~cells.expand(4, -1, -1, -1)], base[~cells.expand(4, -1, -1, -1)])  # outside: the base


def test_growing_region_keeps_the_patch_at_its_top_left():
    cells = _box_cells([(2, 2, 4, 4), (2, 2, 6, 6), None])[None]
    base = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    out = tracked_noise(cells, base, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, 1, 2:4, 2:4], out[:, 0, 2:4, 2:4], rtol=0, atol=0)
    assert not torch.equal(out[:, 1, 4:6, 4:6], base[:, 1, 4:6, 4:6])  # the new cells come from the patch too
    assert torch.equal(out[:, 2], base[:, 2])  # the object is not in frame 2: nothing drawn there


def test_objects_get_their_own_patches_and_the_later_one_wins_an_overlap():
    a = _box_cells([(0, 0, 4, 4)] * 3)
    b = _box_cells([(2, 2, 6, 6)] * 3)
    base = torch.zeros(4, 3, 12, 12)
    both = tracked_noise(torch.stack([a, b]), base, torch.Generator().manual_seed(0))
    only_b = tracked_noise(torch.stack([torch.zeros_like(a), b]), base, torch.Generator().manual_seed(0))
    torch.testing.assert_close(both[:, :, 2:6, 2:6], only_b[:, :, 2:6, 2:6], rtol=0, atol=0)  # b drew second in both
    assert not torch.equal(both[:, 0, 0:2, 0:2], both[:, 0, 2:4, 2:4])


def test_seeded_and_patch_statistics():
    cells = _box_cells([(0, 0, 12, 12)] * 3)[None]
    base = torch.zeros(4, 3, 12, 12)
    a = tracked_noise(cells, base, torch.Generator().manual_seed(5))
    assert torch.equal(a, tracked_noise(cells, base, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, tracked_noise(cells, base, torch.Generator().manual_seed(6)))
    assert abs(float(a[:, 0].mean())) < 0.3 and 0.8 < float(a[:, 0].std()) < 1.2  # standard normal


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="object_cells"):
        tracked_noise(torch.zeros(1, 3, 12, 12, dtype=torch.bool), torch.zeros(4, 2, 12, 12))


def test_every_frame_of_an_object_takes_its_anchor_frames_region_moved_with_it():
    boxes = [(2, 3, 5, 7), (4, 4, 7, 8), (1, 8, 4, 12)]
    cells = _box_cells(boxes)[None]
    latents = torch.randn(1, 4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    out, anchors = anchor_object_latents(latents, cells, torch.tensor([[0.1, 0.7, 0.3]]))
    assert anchors == [1]  # the frame of highest presence
    anchor = latents[:, :, 1, 4:7, 4:8]
    torch.testing.assert_close(out[:, :, 0, 2:5, 3:7], anchor, rtol=0, atol=0)
    torch.testing.assert_close(out[:, :, 2, 1:4, 8:12], anchor, rtol=0, atol=0)
    outside = ~cells[0].expand(1, 4, -1, -1, -1)
    assert torch.equal(out[outside], latents[outside])  # cells outside the region are never touched
    assert torch.equal(out[:, :, 1], latents[:, :, 1])  # the anchor frame keeps its own latents
    assert torch.equal(latents, latents.clone()) and out.data_ptr() != latents.data_ptr()  # a new tensor


def test_a_larger_region_than_the_anchors_keeps_its_own_cells_past_the_anchors_extent():
    cells = _box_cells([(2, 2, 4, 4), (2, 2, 6, 6), None])[None]
    latents = torch.randn(2, 3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    out, anchors = anchor_object_latents(latents, cells, torch.tensor([[0.9, 0.2, 5.0]]))
    assert anchors == [0]  # frame 2 has no cells: never the anchor, whatever its presence
    torch.testing.assert_close(out[:, :, 1, 2:4, 2:4], latents[:, :, 0, 2:4, 2:4], rtol=0, atol=0)
    assert torch.equal(out[:, :, 1, 4:6, 2:6], latents[:, :, 1, 4:6, 2:6])  # no anchor cell at that offset
    assert torch.equal(out[:, :, 2], latents[:, :, 2])  # the object is not in frame 2


def test_objects_anchor_on_their_own_frames_and_an_absent_object_is_reported():
    a = _box_cells([(0, 0, 3, 3), (0, 1, 3, 4), (0, 2, 3, 5)])
    b = _box_cells([(6, 6, 9, 9)] * 3)
    latents = torch.randn(1, 2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    presence = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    out, anchors = anchor_object_latents(latents, torch.stack([a, b, torch.zeros_like(a)]), presence)
    assert anchors == [2, 0, -1]
    for f in range(3):
        torch.testing.assert_close(out[:, :, f, 0:3, f:f + 3], latents[:, :, 2, 0:3, 2:5], rtol=0, atol=0)
        torch.testing.assert_close(out[:, :, f, 6:9, 6:9], latents[:, :, 0, 6:9, 6:9], rtol=0, atol=0)


def test_anchor_shape_mismatch_is_an_error():
    cells = torch.zeros(1, 3, 12, 12, dtype=torch.bool)
    with pytest.raises(ValueError, match="object_cells"):
        anchor_object_latents(torch.zeros(1, 4, 2, 12, 12), cells, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="presence"):
        anchor_object_latents(torch.zeros(1, 4, 3, 12, 12), cells, torch.zeros(2, 3))
