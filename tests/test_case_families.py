"""The benchmark's case families (reatco/toy/families.py): exact truth per family, and the
stray-blob and kept-object scores on ideal and broken edits (no model runs)."""

import numpy as np
import pytest

from reatco.toy import world
from reatco.toy.editing import (invariant_psnr, kept_scores, placement_scores, relation, stray_blobs,
                                stray_frames, temporal_scores)
from reatco.toy.families import BORDER_DEPTH, FAMILIES, FAST_PX, LARGER, SMALLER, make_case
from scripts_loader import load_script

SEED = 2_000_000  # the benchmark's own seed offset


def _ideal(case, swap: bool = False) -> np.ndarray:
    """The edit a perfect model would make: the source with every region cleared to the
    background and a disc of region j's (or, swapped, the other region's) colour at its centre."""
    frames = case.source.frames.copy()
    inside = ~case.outside_mask()
    n_j = len(case.targets)
    for f in range(frames.shape[0]):
        frames[f][inside[f]] = case.source.background[inside[f]]
        for j, (colour, _) in enumerate(case.targets):
            x1, y1, x2, y2 = case.boxes[(n_j - 1 - j) if swap else j, f]
            disc = world.shape_mask("circle", (x1 + x2) / 2, (y1 + y2) / 2, 0.4 * min(x2 - x1, y2 - y1))
            frames[f][disc] = world.COLORS[colour]
    return frames


def test_every_family_is_selectable_by_name_and_deterministic():
    for family in FAMILIES:
        a, b = make_case(family, SEED, 3, n_frames=4, box_grid=4), make_case(family, SEED, 3, n_frames=4, box_grid=4)
        assert a.family == family and a.prompt == b.prompt and np.array_equal(a.source.frames, b.source.frames)
        assert not np.array_equal(a.source.frames, make_case(family, SEED, 4, n_frames=4).source.frames)
    with pytest.raises(ValueError, match="unknown case family 'swirl'.*cross"):
        make_case("swirl", SEED, 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_ideal_edit_scores_perfectly_and_regions_follow_their_objects(family):
    for i in range(2):
        case = make_case(family, SEED, i, n_frames=6, box_grid=4)
        n_f = case.source.frames.shape[0]
        assert case.boxes.shape == (len(case.targets), n_f, 4) and (case.boxes % 4 == 0).all()
        named = [case.prompt.index(f"a {w}") for w in case.words]
        assert named == sorted(named)  # the prompt names the new objects in region order
        for j, k in enumerate(case.followed):
            assert case.targets[j][0] != case.source.shapes[k].color  # an unedited source object never scores
            if case.region_scale is None:  # the region covers its whole source object
                assert not (case.source.masks[k] & case.outside_mask()).any()
        frames = _ideal(case)
        scores = placement_scores(frames, case)
        assert scores["placement"] == 1.0 and scores["relation"] == 1.0
        assert invariant_psnr(frames, case) == float("inf") and stray_frames(frames, case) == 0.0
        assert kept_scores(frames, case) == (1.0 if case.kept else pytest.approx(float("nan"), nan_ok=True))


def test_crossing_objects_swap_sides_and_swapped_edits_score_zero():
    for i in range(6):
        case = make_case("cross", SEED, i, n_frames=8, box_grid=4)
        centres = case.source.centers  # (2, F, 2)
        first, last = relation(centres[0, 0], centres[1, 0]), relation(centres[0, -1], centres[1, -1])
        assert {first, last} == {"left", "right"}  # left/right, and the other way round at the end
        # each new object takes the other source object's shape: recolouring the sources swaps them
        shapes = [s.shape for s in case.source.shapes]
        assert shapes[0] != shapes[1] and [s for _, s in case.targets] == shapes[::-1]
        swapped = placement_scores(_ideal(case, swap=True), case)
        assert swapped["placement"] == 0.0 and swapped["relation"] == 0.0


def test_three_objects_are_edited_at_once():
    for i in range(4):
        case = make_case("three", SEED, i, n_frames=4)
        assert len(case.targets) == len(case.source.shapes) == 3 and case.boxes.shape[0] == 3
        assert len({c for c, _ in case.targets}) == 3 and case.prompt.count(", ") == 1
        assert np.array_equal(case.boxes, case.source.boxes)  # box_grid 1: the tight boxes
        frames = _ideal(case)
        frames[1][case.source.masks[2, 1]] = case.source.frames[1][case.source.masks[2, 1]]  # one region left unedited
        scores = placement_scores(frames, case)
        assert not scores["frames"][1]["placed"] and scores["placement"] == 3 / 4


def test_long_fast_and_border_families_move_as_named():
    long = make_case("long", SEED, 0, n_frames=8)
    assert long.source.frames.shape[0] == 16 and long.boxes.shape[1] == 16
    wan_long = make_case("long", SEED, 0, n_frames=9)  # Wan's VAE takes 4k + 1 frames: 17, not 18
    assert wan_long.source.frames.shape[0] == 17 and wan_long.boxes.shape[1] == 17
    for i in range(4):
        steps = np.linalg.norm(np.diff(make_case("fast", SEED, i).source.centers, axis=1), axis=-1)
        assert (steps >= FAST_PX[0] - 1e-9).all() and (steps <= FAST_PX[1] + 1e-9).all()
        assert np.allclose(steps, steps[:, :1])  # constant speed along a straight line
        border = make_case("border", SEED, i)
        src = border.source
        for j, shape in enumerate(src.shapes):
            distance = np.minimum(src.centers[j], world.SIZE - src.centers[j]).min(-1)  # to the nearest edge
            assert (distance >= BORDER_DEPTH[0] * shape.radius - 1e-9).all() and (distance < shape.radius).all()
            b = src.boxes[j]
            assert ((b[:, 0] == 0) | (b[:, 1] == 0) | (b[:, 2] == world.SIZE) | (b[:, 3] == world.SIZE)).all()
            assert (src.masks[j].sum((1, 2)) >= 24).all()


def test_box_scale_regions_are_larger_and_smaller_than_their_objects():
    for i in range(6):
        case = make_case("box_scale", SEED, i)
        small, large = sorted(range(2), key=lambda j: case.region_scale[j])
        assert SMALLER[0] <= case.region_scale[small] <= SMALLER[1] and LARGER[0] <= case.region_scale[large] <= LARGER[1]
        for j, scale in enumerate(case.region_scale):
            src, reg = case.source.boxes[j].astype(float), case.boxes[j].astype(float)
            clipped = (reg[:, :2] == 0) | (reg[:, 2:] == world.SIZE)  # a larger box may meet the frame edge
            centre_shift = np.abs((src[:, :2] + src[:, 2:]) - (reg[:, :2] + reg[:, 2:])) / 2
            width, src_width = reg[:, 2:] - reg[:, :2], src[:, 2:] - src[:, :2]
            assert (clipped | (centre_shift <= 1)).all() and (clipped | (np.abs(width - scale * src_width) <= 2)).all()
            assert ((width < src_width) if j == small else (width > src_width)).all()
        lo, hi = np.maximum(case.boxes[0, :, :2], case.boxes[1, :, :2]), np.minimum(case.boxes[0, :, 2:], case.boxes[1, :, 2:])
        assert ((hi - lo) <= 0).any(-1).all()  # the two regions never overlap


def test_the_kept_object_has_no_region_and_must_stay():
    for i in range(4):
        case = make_case("keep", SEED, i, box_grid=4)
        (k,), (e,) = case.kept, case.followed
        assert {k, e} == {0, 1} and len(case.objects()) == 1
        assert case.source.shapes[k].phrase in case.prompt and case.words[0] in case.prompt
        assert not (case.source.masks[k] & ~case.outside_mask()).any()  # wholly in the invariant region
        frames = _ideal(case)
        assert kept_scores(frames, case) == 1.0
        gone = frames.copy()
        gone[2][case.source.masks[k, 2]] = case.source.background[case.source.masks[k, 2]]
        assert kept_scores(gone, case) == pytest.approx(7 / 8)
        doubled = frames.copy()  # a second copy of the kept object inside the edited region
        x1, y1, x2, y2 = case.boxes[0, 0]
        doubled[0][world.shape_mask("square", (x1 + x2) / 2, (y1 + y2) / 2, 0.45 * min(x2 - x1, y2 - y1))] = \
            world.COLORS[case.source.shapes[k].color]
        assert kept_scores(doubled, case) == pytest.approx(7 / 8)


def test_stray_blobs_count_blobs_of_edited_colours_mostly_outside_the_regions():
    background = np.full((32, 32, 3), 128, np.uint8)
    source = np.stack([background] * 4)
    inside = np.zeros((4, 32, 32), bool)
    inside[:, :, :16] = True  # the region: the left half
    red, blue = world.COLORS["red"], world.COLORS["blue"]
    frames = source.copy()
    frames[0, 2:6, 20:24] = red  # 16 px outside: a stray blob
    frames[0, 20:24, 20:24] = red  # a second one
    frames[1, 2:8, 10:17] = red  # mostly inside (one column spills over): part of the edited object
    frames[2, 2:5, 20:23] = red  # 9 px: under the detector's floor
    frames[3, 2:6, 20:24] = blue  # a colour the edit does not use
    counts = stray_blobs(frames, source, ["red"], inside)
    assert counts.tolist() == [2, 0, 0, 0]
    assert stray_blobs(frames, source, ["red", "blue"], inside).tolist() == [2, 0, 0, 1]
    assert stray_blobs(frames, source, ["red"], inside, min_pixels=9).tolist() == [2, 0, 1, 0]
    source_with_red = source.copy()
    source_with_red[0, 2:6, 20:24] = red  # already red in the source: not the edit's
    assert stray_blobs(frames, source_with_red, ["red"], inside).tolist() == [1, 0, 0, 0]


def test_bench_rejects_an_unknown_family_before_loading_anything(capsys):
    bench = load_script("bench_shapes")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--sections", "editing", "--families", "cross,swirl", "--model", "/nonexistent"])
    assert exit_.value.code == 2 and "--families: unknown swirl" in capsys.readouterr().err


def test_temporal_scores_are_zero_for_an_edit_that_moves_with_its_boxes_and_see_shake_and_flicker():
    case = make_case("base", SEED, 1, n_frames=8, box_grid=4)
    ideal = _ideal(case)  # a disc at each box's centre: moves exactly with the box path
    smooth = temporal_scores(ideal, case)
    assert smooth["centroid_jitter_px"] < 0.3 and smooth["flicker"] == 0.0
    assert smooth["source_region_change"] > 0 and np.isfinite(smooth["region_change_ratio"])
    # the source itself, scored against itself: its change is its own
    assert temporal_scores(case.source.frames, case)["region_change_ratio"] == pytest.approx(1.0)
    # shift the first object 3 px right on every other frame: its offset's second difference is 6 px,
    # the second object's 0, pooled over both objects' triples: 3 px
    shaken = ideal.copy()
    colour = world.COLORS[case.targets[0][0]]
    for f in range(0, shaken.shape[0], 2):
        x1, y1, x2, y2 = case.boxes[0, f]
        mask = np.zeros(shaken.shape[1:3], bool)
        mask[y1:y2, x1:x2] = True
        blob = mask & (shaken[f] == colour).all(-1)
        shaken[f][blob] = case.source.background[blob]
        moved = np.roll(blob, 3, axis=1)
        shaken[f][moved] = colour
    shaky = temporal_scores(shaken, case)
    assert shaky["centroid_jitter_px"] == pytest.approx(3.0, abs=0.5) and shaky["flicker"] == 0.0
    assert shaky["region_change"] > smooth["region_change"]
    # drop the second object from every other frame: it flickers on every pair
    gone = ideal.copy()
    for f in range(1, gone.shape[0], 2):
        inside = ~case.outside_mask()[f]
        blob = inside & (gone[f] == world.COLORS[case.targets[1][0]]).all(-1)
        gone[f][blob] = case.source.background[blob]
    assert temporal_scores(gone, case)["flicker"] == pytest.approx(0.5)  # one object of two, every pair
