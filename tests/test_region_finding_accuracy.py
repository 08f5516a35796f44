"""The attention finder (source: {word}) measured against the exact truth of the shapes world: the
shipped demo clip (data/shapes-demo/truth.json) and clips of the world's harder families, on the
shipped shapes model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reatco.regions.finding import box_iou, find_source_regions

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROMPT = "a red circle and a blue square on a gray background"


@pytest.fixture(scope="module")
def shapes_pipe():
    from reatco.pipeline import ReAtCoPipeline

    pipe = ReAtCoPipeline.from_pretrained(ROOT / "data" / "shapes-model")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _found_boxes(pipe, video, caption, words, **spec):
    with torch.no_grad():
        latents = pipe.encode_video(video, torch.Generator().manual_seed(33))
    regions = find_source_regions(pipe, video, latents, caption, [dict(spec, word=w) for w in words], rad_cell_px=8)
    return [r.boxes.numpy() for r in regions]


def _mean_ious(found, truth):
    return [float(np.mean([box_iou(b[f], np.asarray(t[f], float)) for f in range(len(b))])) for b, t in zip(found, truth)]


def test_the_attention_finder_meets_its_iou_on_the_demo_clip(shapes_pipe):
    from reatco.video import read_video

    truth = json.loads((ROOT / "data" / "shapes-demo" / "truth.json").read_text())["boxes"]
    video = read_video(ROOT / "data" / "shapes-demo" / "frames", 64, 64, 8)
    ious = _mean_ious(_found_boxes(shapes_pipe, video, DEMO_PROMPT, list(truth)), list(truth.values()))
    print("per object IoU", dict(zip(truth, np.round(ious, 3))))
    # measured 1.00 for both (before the cues were balanced: red circle 0.70, blue square 0.86)
    assert np.mean(ious) >= 0.8 and min(ious) >= 0.8, ious


@pytest.mark.parametrize("family", ["base", "cross", "three"])
def test_the_attention_finder_holds_beyond_the_demo(shapes_pipe, family):
    """Two clips of each family, drawn with a seed no setting was chosen on."""
    from reatco.toy import world
    from reatco.toy.families import make_case

    ious = []
    for index in range(2):
        source = make_case(family, 9_000_017, 50_000 + index, n_frames=8).source
        found = _found_boxes(shapes_pipe, world.to_tensor(source.frames), source.caption, [s.phrase for s in source.shapes])
        ious += _mean_ious(found, source.boxes)
    print(family, np.round(ious, 3))
    assert np.mean(ious) >= 0.8, ious


def test_regions_round_out_to_whole_latent_cells():
    """The edit's regions cover every latent cell the object touches (IRJS keeps the others)."""
    from reatco.regions.finding import Instance, region_from_instances

    mask = np.zeros((40, 40), bool)
    mask[5:19, 9:22] = True
    per_frame = [[Instance(0, np.array([9.0, 5.0, 22.0, 19.0]), mask, 1.0)]]
    tight = region_from_instances(per_frame, 40, 40).boxes.numpy()
    assert tight.tolist() == [[9, 5, 22, 19]]
    cells = region_from_instances(per_frame, 40, 40, whole_cells=4).boxes.numpy()
    assert cells.tolist() == [[8, 4, 24, 20]]
    masks = region_from_instances(per_frame, 40, 40, kind="mask", whole_cells=4).pixel_masks.numpy()[0]
    expected = np.zeros((40, 40), bool)
    expected[4:20, 8:24] = True
    assert (masks == expected).all()
