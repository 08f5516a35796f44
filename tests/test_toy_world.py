"""The shapes world: deterministic generator, exact detector, CLIP-format tokenizer, shipped model."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from reatco.toy import world
from reatco.toy.detector import detect, detect_present, shape_of_blob
from reatco.metrics.fidelity import masked_psnr
from reatco.toy.editing import (invariant_breakdown, invariant_psnr, make_edit_case, placement_scores, relation,
                                snap_boxes)

MODEL = Path(__file__).resolve().parents[1] / "data" / "shapes-model"


def test_images_and_videos_are_deterministic():
    a, b = world.make_image(3, 17), world.make_image(3, 17)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert not np.array_equal(a.frames, world.make_image(3, 18).frames)
    v, w = world.make_video(5, 2, n_frames=6), world.make_video(5, 2, n_frames=6)
    assert np.array_equal(v.frames, w.frames) and np.array_equal(v.boxes, w.boxes)


def test_captions_name_colours_shapes_background_never_positions():
    for i in range(200):
        s = world.make_image(0, i)
        words = re.findall(r"[a-z]+", s.caption)
        assert not set(words) & set(world.POSITION_WORDS), s.caption
        assert s.caption.endswith(f"on a {s.background_name} background")
        for sh in s.shapes:
            assert f"a {sh.color} {sh.shape}" in s.caption
        assert set(words) <= set(world.vocabulary())


def test_captions_cover_one_and_two_objects():
    counts = {len(world.make_image(0, i).shapes) for i in range(100)}
    assert {1, 2} <= counts
    assert world.make_image(0, 0, n_objects=2).caption.count(" and ") == 1


def test_boxes_and_masks_match_the_pixels():
    for i in range(50):
        s = world.make_video(1, i, n_frames=4, n_objects=2)
        assert s.frames.shape == (4, world.SIZE, world.SIZE, 3) and s.frames.dtype == np.uint8
        for j, sh in enumerate(s.shapes):
            for f in range(4):
                m = s.masks[j, f]
                assert (s.frames[f][m] == world.COLORS[sh.color]).all()
                ys, xs = np.nonzero(m)
                assert tuple(s.boxes[j, f]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert abs(xs.mean() + 0.5 - s.centers[j, f, 0]) < 1.0
        # the background outside the shapes is static and equals the returned background
        outside = ~s.masks.any(0)
        for f in range(4):
            assert (s.frames[f][outside[f]] == s.background[outside[f]]).all()


def test_videos_move_smoothly_and_stay_inside():
    s = world.make_video(2, 0, n_frames=8, n_objects=2)
    step = np.linalg.norm(np.diff(s.centers, axis=1), axis=-1)
    assert step.max() < 8 and step.max() > 0
    assert (s.boxes >= 0).all() and (s.boxes <= world.SIZE).all()


def test_paths_fit_only_when_every_shape_stays_in_the_frame_and_apart():
    radii = np.array([5.0, 6.0])
    apart = np.array([[[10.0, 10.0], [12.0, 10.0]], [[40.0, 40.0], [40.0, 44.0]]])  # (J=2, F=2, 2)
    assert world.paths_fit(apart, radii)
    leaving = apart.copy()
    leaving[0, 1] = [4.0, 10.0]  # the 5 px shape's centre 4 px from the left edge in frame 1
    assert not world.paths_fit(leaving, radii)
    touching = apart.copy()
    touching[1, 1] = [12.0 + 5 + 6 + 1, 10.0]  # 12 px apart in frame 1: under the radii and the 2 px margin
    assert not world.paths_fit(touching, radii)
    assert not world.paths_fit(apart, radii, size=45)  # the 6 px shape at y = 44 leaves a 45 px frame


def test_detector_is_exact_on_generated_frames():
    for i in range(150):
        s = world.make_image(7, i)
        found = detect(s.image)
        present = {d.color for d in detect_present(s.image)}
        assert present == {sh.color for sh in s.shapes}
        for j, sh in enumerate(s.shapes):
            d = found[sh.color]
            ys, xs = np.nonzero(s.masks[j, 0])
            assert d.found and d.shape == sh.shape, (i, sh, d)
            assert d.box == tuple(s.boxes[j, 0])
            assert abs(d.centroid[0] - (xs.mean() + 0.5)) <= 0.5 and abs(d.centroid[1] - (ys.mean() + 0.5)) <= 0.5
            assert d.pixels == len(xs)


def test_detector_tolerates_noise_and_ignores_specks():
    s = world.make_image(4, 1, n_objects=1)
    rng = np.random.default_rng(0)
    noisy = np.clip(s.image.astype(int) + rng.integers(-25, 26, s.image.shape), 0, 255).astype(np.uint8)
    noisy[0:2, 0:2] = world.COLORS["red" if s.shapes[0].color != "red" else "blue"]  # a 4-pixel speck
    d = detect_present(noisy)
    assert [x.color for x in d] == [s.shapes[0].color] and d[0].shape == s.shapes[0].shape


def _rounded_square(side: int, radius: float) -> np.ndarray:
    """A square with corners rounded by `radius` pixels, as the model tends to draw them."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    dx = np.clip(np.maximum(radius - xx, xx - (side - radius)), 0, None)
    dy = np.clip(np.maximum(radius - yy, yy - (side - radius)), 0, None)
    return dx**2 + dy**2 <= radius**2


def test_shape_rule_reads_rounded_squares_as_squares_and_discs_as_circles():
    for side in (10, 16, 24):
        for radius in (0.0, side * 0.15, side * 0.25):
            shape, fill = shape_of_blob(_rounded_square(side, radius))
            assert shape == "square", (side, radius, fill)
        disc = world.shape_mask("circle", side / 2, side / 2, side / 2, size=side)
        assert shape_of_blob(disc)[0] == "circle"
        tri = world.shape_mask("triangle", side / 2, side / 2, side / 2, size=side)
        assert shape_of_blob(tri)[0] == "triangle"
        assert shape_of_blob(tri[::-1])[0] != "triangle"  # apex down is not one of the world's triangles


def test_edit_cases_are_deterministic_and_use_the_colours_the_source_lacks():
    a, b = make_edit_case(5, 3), make_edit_case(5, 3)
    assert a.prompt == b.prompt and np.array_equal(a.source.frames, b.source.frames)
    for i in range(12):
        case = make_edit_case(5, i, n_frames=6)
        source_colours = {s.color for s in case.source.shapes}
        assert len(case.targets) == 2 and not source_colours & {c for c, _ in case.targets}
        assert case.prompt.startswith(f"a {case.words[0]} and a {case.words[1]} on a ")
        assert case.boxes.shape == (2, 6, 4) and case.video_tensor().shape == (6, 3, world.SIZE, world.SIZE)
        objs = case.objects()
        assert [o["word"] for o in objs] == case.words and objs[1]["boxes"][5] == case.boxes[1, 5].tolist()
        outside = case.outside_mask()
        assert not (outside & case.source.masks.any(0)).any()  # every source pixel is inside a region


def _paint(case, swap: bool = False) -> np.ndarray:
    """Ideal edit: the target shapes drawn at the source objects' places (optionally swapped),
    small enough (0.7 of the source radius) to stay inside the source's box."""
    frames = case.source.frames.copy()
    for f in range(frames.shape[0]):
        frames[f] = case.source.background
        for j, (colour, shape) in enumerate(case.targets):
            k = 1 - j if swap else j
            cx, cy = case.source.centers[k, f]
            frames[f][world.shape_mask(shape, cx, cy, 0.7 * case.source.shapes[k].radius)] = world.COLORS[colour]
    return frames


def test_edited_cells_are_the_pipelines_irjs_mask_and_the_breakdown_splits_the_error():
    import torch

    from reatco.irjs import blend as irjs
    from reatco.regions.region import object_masks
    from reatco.regions.parsing import parse_region
    from reatco.regions.settings import object_settings

    case = make_edit_case(2, 0)
    edited = case.edited_cells(16)
    regions = [parse_region(object_settings(o), 8, 64, 64, 8) for o in case.objects()]
    reference = irjs.latent_region_mask(object_masks(regions, 8, 16, 16), 16, 16)[0, 0]  # what the pipeline blends with
    assert torch.equal(torch.from_numpy(edited[:, ::4, ::4]).float(), reference)
    assert (edited[:, ::4, ::4].repeat(4, 1).repeat(4, 2) == edited).all()  # whole 4×4-pixel cells
    outside = case.outside_mask()
    cut = outside & edited
    assert cut.any() and (outside & ~edited).any()  # tight boxes are not on the 4 px grid
    # change only the pixels of the cut cells that lie outside the boxes: the kept part stays exact
    frames = case.source.frames.copy()
    frames[cut] = 255 - frames[cut]
    split = invariant_breakdown(frames, case, 16)
    assert split["kept_cells_psnr"] == float("inf") and split["cut_cells_psnr"] < 20
    assert split["cut_cells_share"] == pytest.approx(cut.sum() / outside.sum())
    assert invariant_psnr(frames, case) > split["cut_cells_psnr"]  # the same error over more pixels
    with pytest.raises(ValueError, match="latent cells"):
        case.edited_cells(24)


def test_region_boxes_round_out_to_the_latent_grid():
    for i in range(6):
        tight, snapped = make_edit_case(3, i), make_edit_case(3, i, box_grid=4)
        assert np.array_equal(tight.boxes, tight.source.boxes) and snapped.prompt == tight.prompt
        b, t = snapped.boxes, tight.boxes
        assert (b % 4 == 0).all() and (b[..., :2] <= t[..., :2]).all() and (b[..., 2:] >= t[..., 2:]).all()
        assert (b[..., :2] > t[..., :2] - 4).all() and (b[..., 2:] < t[..., 2:] + 4).all()  # by less than a cell
        assert (b >= 0).all() and (b <= world.SIZE).all()
        # IRJS then keeps every invariant pixel's cell: nothing outside the regions is left to the model
        assert not (snapped.outside_mask() & snapped.edited_cells(16)).any()
    assert snap_boxes(np.array([[1, 4, 61, 63]]), 4, 64).tolist() == [[0, 4, 64, 64]]


def test_placement_scores_an_ideal_edit_one_and_a_swapped_edit_zero():
    case = make_edit_case(2, 0)
    good = placement_scores(_paint(case), case)
    assert good["placement"] == 1.0 and good["relation"] == 1.0 and good["shapes"] == 1.0
    swapped = placement_scores(_paint(case, swap=True), case)
    assert swapped["placement"] == 0.0 and swapped["relation"] == 0.0
    blank = placement_scores(np.repeat(case.source.background[None], 8, 0), case)
    assert blank["placement"] == 0.0 and not blank["frames"][0]["objects"][0]["found"]
    # the ideal edit leaves the background (the invariant region) exactly as it was
    assert invariant_psnr(_paint(case), case) == float("inf")


def test_relation_and_psnr():
    assert relation((10, 10), (30, 12)) == "right" and relation((10, 10), (8, 40)) == "below"
    assert relation((10, 10), (0, 9)) == "left" and relation((10, 10), (11, 0)) == "above"
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[:, 0, 0] = 255  # one wrong pixel per image, outside the mask below
    mask = np.ones((2, 4, 4), bool)
    assert masked_psnr(a, b) == pytest.approx(10 * np.log10(16))
    mask[:, 0, 0] = False
    assert masked_psnr(a, b, mask) == float("inf")


def test_tensor_helpers_are_in_range():
    x, caps = world.image_batch(0, 0, 3)
    assert x.shape == (3, 3, world.SIZE, world.SIZE) and len(caps) == 3
    assert x.min() >= -1 and x.max() <= 1


def test_tokenizer_loads_as_clip_with_one_token_per_word(tmp_path):
    from reatco.toy.tokenizer import MAX_LENGTH, load, save_tokenizer

    tok = load(save_tokenizer(tmp_path))
    assert tok.model_max_length == MAX_LENGTH
    cap = "a red circle, a blue square and a green triangle on a checkered background"
    ids = tok(cap, padding="max_length", max_length=MAX_LENGTH).input_ids
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[0] == "<|startoftext|>" and toks[-1] == "<|endoftext|>" and len(ids) == MAX_LENGTH
    assert toks[1:16] == [w + "</w>" for w in cap.replace(",", " ,").split()]


def test_shipped_model_has_the_sd_layout_and_loads():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (MODEL / sub).is_dir()
    assert (MODEL / "training.json").exists()
    assert sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file()) < 30e6
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL), safety_checker=None)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    tok = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"))
    assert len(tok("a red circle on a gray background").input_ids) == 9
    assert pipe.scheduler.__class__.__name__ == "DDIMScheduler"


def test_demo_config_validates_against_the_shipped_model():
    from reatco.config_files import load_config
    from reatco.runner import EditRunner

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / "shapes.yaml")
    runner = EditRunner(cfg, progress=False)
    (edit,) = runner.prepare()
    assert edit.token_indices == [[2, 3], [6, 7]]  # "green circle", "yellow triangle"
    assert runner.source_video().shape == (8, 3, 64, 64)
    masks = edit.regions[1].masks(8, 8, 8, box_grid=cfg.rad.box_grid)  # as the pipeline builds them (coverage)
    # the keyframed box follows the square: [17, 5, 36, 24] at frame 0, [10, 11, 28, 29] at frame 7
    assert masks[0, 1:3, 2:5].all() and masks[0].sum() == 6
    assert masks[7, 1:4, 1:4].all() and masks[7].sum() == 9
