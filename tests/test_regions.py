"""Regions → per-frame masks on any grid, and every validation error (before any model loads)."""


import numpy as np
import pytest
import torch
from PIL import Image

from reatco.errors import ConfigError
from reatco.regions.region import draw_regions, object_masks, union_mask
from reatco.regions.parsing import parse_region
from reatco.regions.settings import ObjectConfig, object_settings

H, W, CELL = 448, 768, 32  # the paper's clips: a 14×24 attention grid at 1/32
FIELD = "edits[0].objects[1]"


def grid(rows, cols, gh=14, gw=24):
    m = torch.zeros(gh, gw)
    for r in rows:
        for c in cols:
            m[r, c] = 1
    return m


def box_region(box, n_frames=2, cell_px=CELL):
    return parse_region(object_settings({"box": box}), n_frames, H, W, cell_px, FIELD)


def save_mask(path, boxes, size=(W, H)):
    img = np.zeros((size[1], size[0]), np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = 255
    Image.fromarray(img).save(path)


# ----------------------------------------------------------------------------- masks on the grid


def test_box_on_non_square_attention_grid_by_hand():
    # x: 40→1.25 cells (col 1 covered 0.75), 200→6.25 (col 6 covered 0.25) → cols 1…5.
    # y: 100→3.125 (row 3 covered 0.875), 260→8.125 (row 8 covered 0.125) → rows 3…7.
    m = box_region([40, 100, 200, 260]).masks(2, 14, 24)
    assert m.shape == (2, 14, 24) and m.dtype == torch.float32
    expected = grid(range(3, 8), range(1, 6))
    assert torch.equal(m[0], expected) and torch.equal(m[1], expected)


def test_paper_box_matches_the_official_cells():
    # dolphins' jellyfish box: the official rounding gives rows 9:13, cols 3:8 at 448×768.
    m = box_region([93, 287, 269, 417]).masks(1, 14, 24)[0]
    assert torch.equal(m, grid(range(9, 13), range(3, 8)))


def test_coverage_rule_takes_half_covered_rows_and_columns_as_a_rectangle():
    # Edges cover exactly half of row 1 / col 1: both are in (0.5 ≥ 0.5), and so is their corner
    # (1, 1): a box maps to a rectangle of cells, never a cross.
    m = box_region([48, 48, 160, 160]).masks(1, 14, 24, box_grid="coverage")[0]
    assert torch.equal(m, grid(range(1, 5), range(1, 5)))
    # Rows covered 0.625 and columns covered 0.75 at both ends: still a full 3 × 3 block.
    m = box_region([40, 44, 112, 116]).masks(1, 14, 24, box_grid="coverage")[0]
    assert torch.equal(m, grid(range(1, 4), range(1, 4)))
    # Less than half of a row or column is out.
    m = box_region([52, 40, 110, 100]).masks(1, 14, 24, box_grid="coverage")[0]
    assert torch.equal(m, grid(range(1, 3), range(2, 3)))


def _official_cells(box, gh=14, gw=24):
    """pipeline_split_gen.py's box → mask (x scaled by the width ratio instead of the height's)."""
    x1, y1, x2, y2 = box
    y1, y2 = (max(round(b / (H / gh)), 0) for b in (y1, y2))
    x1, x2 = (max(round(b / (W / gw)), 0) for b in (x1, x2))
    m = torch.zeros(gh, gw)
    m[y1:y2, x1:x2] = 1
    return m


def test_round_rule_is_the_official_rounding_half_to_even():
    # Exact halves round to even: 48 px = 1.5 cells → 2, 160 = 5.0 → 5, 80 = 2.5 → 2.
    m = box_region([48, 48, 160, 80]).masks(1, 14, 24)[0]
    assert torch.equal(m, grid(range(2, 3), range(2, 5)))  # rows 2:2 would be empty: the centre row 2 stays
    rng = np.random.default_rng(0)
    for _ in range(300):
        x1, y1 = (int(v) for v in rng.integers(0, 16, 2) * 16)
        w, h = (int(v) for v in rng.integers(2, 8, 2) * 16)
        box = [x1, y1, min(x1 + w, W), min(y1 + h, H)]
        expected = _official_cells(box)
        if expected.sum() > 0:
            assert torch.equal(box_region(box).masks(1, 14, 24)[0], expected), box


def test_the_two_rules_on_the_paper_boxes():
    """Only the hares' left box differs (y1 = 240 px is 7.5 cells: 8 by the official rounding)."""
    paper = {"dolphins": [[93, 287, 269, 417], [262, 257, 477, 378]],
             "hares": [[67, 240, 271, 353], [410, 150, 590, 343]],
             "birds": [[29, 249, 173, 391], [321, 257, 437, 382], [438, 260, 590, 386]]}
    for name, boxes in paper.items():
        for box in boxes:
            official = box_region(box).masks(1, 14, 24)[0]
            assert torch.equal(official, _official_cells(box)), (name, box)
            coverage = box_region(box).masks(1, 14, 24, box_grid="coverage")[0]
            # the latent grid (8 px) of IRJS: both rules agree on every paper box
            assert torch.equal(box_region(box).masks(1, 56, 96)[0], box_region(box).masks(1, 56, 96, box_grid="coverage")[0])
            if box == [67, 240, 271, 353]:
                assert (official.sum(), coverage.sum()) == (18, 24)
            else:
                assert torch.equal(official, coverage), (name, box)
    with pytest.raises(ConfigError, match="rad.box_grid"):
        box_region([0, 0, 64, 64]).masks(1, 14, 24, box_grid="area")


def test_x_scales_by_width_and_y_by_height():
    # A grid whose cells are 64 px tall and 32 px wide: y and x must use their own ratios.
    m = box_region([64, 128, 192, 256]).masks(1, 7, 24)[0]
    assert torch.equal(m, grid(range(2, 4), range(2, 6), 7, 24))


def test_tiny_box_keeps_its_centre_cell():
    r = parse_region(object_settings({"box": [20, 20, 26, 26]}), 1, H, W, 1, FIELD)  # 6 px on a 32 px grid
    m = r.masks(1, 14, 24)[0]
    assert m.sum() == 1 and m[0, 0] == 1


def test_per_frame_boxes_and_static_box_over_frames():
    boxes = [[0, 0, 64, 64], [64, 0, 128, 64], [128, 0, 192, 64]]
    r = parse_region(ObjectConfig(boxes=boxes), 3, H, W, CELL, FIELD)
    m = r.masks(3, 14, 24)
    for f in range(3):
        assert torch.equal(m[f], grid(range(0, 2), range(2 * f, 2 * f + 2)))
    assert torch.equal(r.boxes_px(), torch.tensor(boxes, dtype=torch.float64))
    with pytest.raises(ValueError):
        r.masks(4, 14, 24)
    assert box_region([0, 0, 64, 64], n_frames=2).masks(5, 14, 24).shape == (5, 14, 24)


def test_keyframes_interpolate_linearly_and_hold_at_the_ends():
    r = parse_region(object_settings({"boxes": {2: [0, 0, 64, 64], "6": [64, 32, 192, 96]}}), 9, H, W, CELL, FIELD)
    b = r.boxes_px()
    for f in (0, 1, 2):
        assert b[f].tolist() == [0, 0, 64, 64]
    assert b[4].tolist() == [32, 16, 128, 80]  # halfway
    assert b[3].tolist() == [16, 8, 96, 72]  # a quarter of the way
    for f in (6, 7, 8):
        assert b[f].tolist() == [64, 32, 192, 96]
    single = parse_region(object_settings({"boxes": {5: [0, 0, 64, 64]}}), 8, H, W, CELL, FIELD).boxes_px()
    assert torch.equal(single, torch.tensor([[0, 0, 64, 64]] * 8, dtype=torch.float64))


def test_mask_png_resized_to_working_size(tmp_path):
    save_mask(tmp_path / "m.png", [(20, 50, 100, 130)], size=(W // 2, H // 2))  # half resolution
    r = parse_region(object_settings({"mask": str(tmp_path / "m.png")}), 3, H, W, CELL, FIELD)
    m = r.masks(3, 14, 24)
    assert torch.equal(m[2], box_region([40, 100, 200, 260]).masks(1, 14, 24)[0])
    assert r.boxes_px() is None


def test_mask_folder_per_frame_and_relative_to_base_dir(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    for f in range(3):
        save_mask(folder / f"{f:05d}.png", [(64 * f, 0, 64 * f + 64, 64)])
    r = parse_region(object_settings({"mask": "masks"}), 3, H, W, CELL, FIELD, base_dir=str(tmp_path))
    m = r.masks(3, 14, 24)
    for f in range(3):
        assert torch.equal(m[f], grid(range(0, 2), range(2 * f, 2 * f + 2)))
    # The latent grid (1/8): a 64 px box is 8×8 latent cells.
    assert r.masks(3, 56, 96)[1].sum() == 64


def test_small_mask_keeps_its_most_covered_cell(tmp_path):
    save_mask(tmp_path / "m.png", [(40, 40, 50, 50)])  # 10×10 px inside cell (1, 1)
    m = parse_region(object_settings({"mask": str(tmp_path / "m.png")}), 1, H, W, CELL, FIELD).masks(1, 14, 24)[0]
    assert m.sum() == 1 and m[1, 1] == 1


def test_object_masks_and_union():
    regions = [box_region([0, 0, 64, 64]), box_region([32, 0, 128, 64])]
    masks = object_masks(regions, 2, 14, 24)
    assert masks.shape == (2, 2, 14, 24)
    assert torch.equal(union_mask(masks)[0], grid(range(0, 2), range(0, 4)))
    assert object_masks([], 2, 14, 24).shape == (0, 2, 14, 24)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "box, words",
    [
        ([700, 0, 800, 64], "outside the 768×448 frame"),
        ([-1, 0, 64, 64], "outside"),
        ([0, 400, 64, 449], "outside"),
        ([10, 10, 10, 50], "empty or inverted"),
        ([60, 10, 10, 50], "empty or inverted"),
        ([0, 0, 31, 64], "at least 32 px"),
        ([0, 0, 64, 20], "at least 32 px"),
        ([1, 2, 3], "4 numbers"),
        ([1, 2, 3, 4, 5], "4 numbers"),
        (["a", 0, 64, 64], "finite numbers"),
        (64, "4 numbers"),
    ],
)
def test_bad_box(box, words):
    with pytest.raises(ConfigError) as e:
        box_region(box)
    assert e.value.field == f"{FIELD}.box"
    assert words in e.value.message


def test_exactly_one_region_kind():
    with pytest.raises(ConfigError) as e:
        parse_region(object_settings({"word": "cat"}), 2, H, W, CELL, FIELD)
    assert e.value.field == FIELD and "exactly one" in e.value.message
    with pytest.raises(ConfigError):
        parse_region(object_settings({"box": [0, 0, 64, 64], "mask": "m.png"}), 2, H, W, CELL, FIELD)


@pytest.mark.parametrize("n_boxes", [2, 4])
def test_per_frame_boxes_need_one_box_per_frame(n_boxes):
    with pytest.raises(ConfigError) as e:
        parse_region(object_settings({"boxes": [[0, 0, 64, 64]] * n_boxes}), 3, H, W, CELL, FIELD)
    assert e.value.field == f"{FIELD}.boxes" and f"{n_boxes} boxes for a clip of 3 frames" in e.value.message


def test_bad_box_inside_boxes_names_its_index():
    with pytest.raises(ConfigError) as e:
        parse_region(object_settings({"boxes": [[0, 0, 64, 64], [0, 0, 10, 10]]}), 2, H, W, CELL, FIELD)
    assert e.value.field == f"{FIELD}.boxes[1]"
    with pytest.raises(ConfigError) as e:
        parse_region(object_settings({"boxes": {0: [0, 0, 64, 64], 7: [0, 0, 900, 64]}}), 8, H, W, CELL, FIELD)
    assert e.value.field == f"{FIELD}.boxes[7]"


@pytest.mark.parametrize("key", [16, -1, "x", 2.5])
def test_keyframe_outside_the_clip(key):
    with pytest.raises(ConfigError) as e:
        parse_region(object_settings({"boxes": {0: [0, 0, 64, 64], key: [0, 0, 64, 64]}}), 16, H, W, CELL, FIELD)
    assert e.value.field == f"{FIELD}.boxes[{key}]"


def test_mask_errors(tmp_path):
    field = f"{FIELD}.mask"
    with pytest.raises(ConfigError, match="does not exist") as e:
        parse_region(object_settings({"mask": str(tmp_path / "nope.png")}), 2, H, W, CELL, FIELD)
    assert e.value.field == field
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot read") as e:
        parse_region(object_settings({"mask": str(tmp_path / "bad.png")}), 2, H, W, CELL, FIELD)
    assert e.value.field == field
    save_mask(tmp_path / "black.png", [])
    with pytest.raises(ConfigError, match="empty"):
        parse_region(object_settings({"mask": str(tmp_path / "black.png")}), 2, H, W, CELL, FIELD)
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in range(3):
        save_mask(folder / f"{f}.png", [(0, 0, 64, 64)])
    with pytest.raises(ConfigError, match="3 mask images for a clip of 4 frames") as e:
        parse_region(object_settings({"mask": str(folder)}), 4, H, W, CELL, FIELD)
    assert e.value.field == field


# ----------------------------------------------------------------------------- drawing


def test_draw_regions_outlines_boxes_and_mask_contours(tmp_path):
    image = np.zeros((H, W, 3), np.uint8)
    save_mask(tmp_path / "m.png", [(400, 200, 600, 400)])
    regions = [box_region([100, 100, 300, 300]), parse_region(object_settings({"mask": str(tmp_path / "m.png")}), 2, H, W, CELL, FIELD)]
    out = draw_regions(image, regions, ["jellyfish", "goldfish"], frame=0)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert out[200, 100].any() and out[299, 200].any()  # box outline (left and bottom edges)
    assert not out[200, 200].any()  # inside stays untouched
    assert out[300, 400].any() and out[300, 599].any()  # mask contour
    assert not out[300, 500].any() and not out[300, 650].any()
    assert not np.array_equal(out[100:120, 100:180], np.zeros((20, 80, 3)))  # a label was written
    assert not image.any()  # the input is not modified
    # A smaller image (e.g. a thumbnail) gets rescaled coordinates.
    small = draw_regions(np.zeros((H // 2, W // 2, 3), np.uint8), regions[:1], ["cat"])
    assert small[100, 50].any() and not small[100, 100].any()


def test_mask_box_is_the_tight_exclusive_box():
    from reatco.regions.region import mask_box

    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    assert mask_box(m).tolist() == [2, 1, 5, 3] and mask_box(np.zeros((3, 3), bool)).tolist() == [0, 0, 0, 0]
