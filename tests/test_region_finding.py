"""Regions found in the source video: blobs → instances → tracks → the chosen object's boxes/masks
(pure functions), the shapes model's own attention against the demo clip's exact boxes, and the
detector path on a tiny random OWL-ViT (plumbing: no hub weights here)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reatco.errors import ConfigError
from reatco.regions.settings import SourceRegionConfig
from reatco.regions.finding import (Instance, box_iou, choose_track, fill_boxes, find_source_regions, frame_instances,
                                   grow_boxes, grow_instances, link_tracks, region_from_instances)

ROOT = Path(__file__).resolve().parents[1]


def _blobs(n_frames=4, size=32):
    """Two squares moving right by 2 px a frame: A at x 2…8, B at x 20…30 (larger)."""
    maps = np.zeros((n_frames, size, size))
    for f in range(n_frames):
        maps[f, 4:10, 2 + 2 * f:8 + 2 * f] = 1.0
        maps[f, 14:24, 18 + f:28 + f] = 0.8
    return maps


def test_frame_instances_threshold_relative_to_the_peak():
    per_frame = frame_instances(_blobs(), threshold=0.5)
    assert [len(f) for f in per_frame] == [2, 2, 2, 2]
    big, small = per_frame[1]
    assert big.box.tolist() == [19, 14, 29, 24] and small.box.tolist() == [4, 4, 10, 10]
    assert len(frame_instances(_blobs(), threshold=0.9)[0]) == 1  # B's 0.8 < 0.9 × peak
    assert frame_instances(np.zeros((1, 8, 8)))[0] == []


def test_tracks_and_instance_choice():
    per_frame = frame_instances(_blobs())
    tracks = link_tracks(per_frame, 32, 32)
    assert len(tracks) == 2 and all(all(i is not None for i in t) for t in tracks)
    left = choose_track(tracks, "left")
    assert [i.box[0] for i in left] == [2, 4, 6, 8]
    assert choose_track(tracks, "right") is choose_track(tracks, "largest") is choose_track(tracks, 2, "left")
    assert choose_track(tracks, 1, "right") is choose_track(tracks, "right")
    assert choose_track(tracks, "top") is left and choose_track(tracks, "bottom") is not left
    with pytest.raises(ConfigError, match="instance 3 counted from the left, but 2 were found") as err:
        choose_track(tracks, 3, field="edits[0].objects[0].source.instance")
    assert err.value.field == "edits[0].objects[0].source.instance"
    with pytest.raises(ConfigError, match="nothing was found"):
        region_from_instances([[], []], 32, 32)


def test_missing_frames_are_interpolated_and_flicker_is_ignored():
    a = [Instance(f, np.array([2.0 * f, 0, 2.0 * f + 10, 10]), None, 1.0) for f in range(5)]
    track = [a[0], None, None, a[3], None]
    assert fill_boxes(track)[:, 0].tolist() == [0, 2, 4, 6, 6]
    blip = Instance(2, np.array([20.0, 20, 30, 30]), None, 1.0)  # one frame only: not an object
    tracks = link_tracks([[a[0]], [a[1]], [a[2], blip], [a[3]]], 32, 32)
    assert len(tracks) == 2 and choose_track(tracks, "right")[0] is a[0]


def test_grow_boxes_margin_minimum_side_and_frame():
    boxes = np.array([[10.0, 10, 12, 30], [0, 0, 4, 4]])
    grown = grow_boxes(boxes, margin=2, min_side=8, height=32, width=32)
    assert grown.tolist() == [[7, 8, 15, 32], [0, 0, 8, 8]]


def test_regions_as_boxes_or_masks_with_margin():
    per_frame = frame_instances(_blobs())
    region = region_from_instances(per_frame, 32, 32, "left", margin=1, kind="boxes", min_side=1)
    assert region.kind == "boxes" and region.boxes[0].tolist() == [1, 3, 9, 11]
    masks = region_from_instances(per_frame, 32, 32, "left", margin=1, kind="mask").pixel_masks
    assert masks.shape == (4, 32, 32) and masks[0].sum() == 8 * 8  # a 6×6 square dilated by 1 px (a square element)
    both = region_from_instances(per_frame, 32, 32, "all", min_side=1)
    assert both.boxes[0].tolist() == [2, 4, 28, 24]


def test_a_seed_grows_over_pixels_like_it():
    feats = np.zeros((2, 16, 16))
    feats[0] = -1.0
    feats[0, 4:12, 2:10] = 1.0  # the object: feature (1, 0); background (-1, 0)
    attention = np.zeros((16, 16))
    attention[7:9, 5:7] = 1.0  # the word's attention peaks on part of it only
    seed = frame_instances(attention[None])[0]
    grown = grow_instances(seed, attention, feats, similarity=0.5)
    assert len(grown) == 1 and grown[0].box.tolist() == [2, 4, 10, 12]


def test_the_shapes_model_finds_the_demo_objects_in_its_own_attention():
    from reatco.pipeline import ReAtCoPipeline
    from reatco.video import read_video

    pipe = ReAtCoPipeline.from_pretrained(str(ROOT / "data" / "shapes-model"))
    pipe.set_progress_bar_config(disable=True)
    video = read_video(ROOT / "data" / "shapes-demo" / "frames", 64, 64, 8)
    latents = pipe.encode_video(video, torch.Generator().manual_seed(33))
    truth = json.loads((ROOT / "data" / "shapes-demo" / "truth.json").read_text())
    words = truth["objects"]
    regions = find_source_regions(pipe, video, latents, truth["caption"], [{"word": w} for w in words], rad_cell_px=8)
    for word, region in zip(words, regions):
        ious = [box_iou(region.boxes[f].numpy(), np.array(truth["boxes"][word][f], float)) for f in range(8)]
        assert np.mean(ious) > 0.6, (word, ious)
    # the backbone itself and typed specs find the same regions as the pipeline and dicts
    typed = find_source_regions(pipe.backbone, video, latents, truth["caption"], [SourceRegionConfig(word=w) for w in words], 8)
    assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(regions, typed))
    # the two objects are told apart by position too: the circle is the bottom one
    both = find_source_regions(pipe, video, latents, truth["caption"], [{"word": "circle and a blue square", "instance": "bottom"}], 8)
    circle = np.array(truth["boxes"]["red circle"][0], float)
    assert box_iou(both[0].boxes[0].numpy(), circle) > 0.5
    with pytest.raises(ConfigError) as err:
        find_source_regions(pipe, video, latents, truth["caption"], [{"word": "dolphin"}], 8, ["edits[0].objects[0].source"])
    assert err.value.field == "edits[0].objects[0].source.word"


def test_detector_plumbing_on_a_tiny_owlvit(tmp_path):
    from PIL import Image
    from transformers import OwlViTForObjectDetection

    from reatco.regions.detector import detect_instances, detect_source_regions, load_detector
    from tiny_models import save_tiny_owlvit

    folder = save_tiny_owlvit(tmp_path / "owl")
    # A random box head draws degenerate boxes; zeroed, each patch predicts its own grid box.
    owl = OwlViTForObjectDetection.from_pretrained(folder)
    with torch.no_grad():
        owl.box_head.dense2.weight.zero_()
        owl.box_head.dense2.bias.zero_()
    owl.save_pretrained(folder)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(3, 64, 64, 3), dtype=np.uint8)
    model, processor = load_detector(str(folder))
    per_frame = detect_instances(frames, model, processor, "a dolphin", score=0.9)
    # the reference: the model's own outputs, kept above the score, in pixels
    for frame, found in zip(frames, per_frame):
        with torch.no_grad():
            out = model(**processor(text=[["a dolphin"]], images=Image.fromarray(frame), return_tensors="pt"))
        scores = out.logits[0, :, 0].sigmoid()
        cx, cy, w, h = out.pred_boxes[0].unbind(-1)
        boxes = (torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * 64).clamp(0, 64)
        keep = (scores >= 0.9).nonzero()[:, 0]
        expected = sorted(tuple(np.round(boxes[k].numpy().astype(float), 3).tolist()) for k in keep)  # grid boxes never overlap: none suppressed
        assert sorted(tuple(np.round(i.box, 3).tolist()) for i in found) == expected and len(found) > 0
        assert found[0].score == pytest.approx(float(scores.max()))
    spec = {"detector": str(folder), "query": "a dolphin", "score": 0.0}
    left, right = detect_source_regions(frames, [{**spec, "instance": "left"}, {**spec, "instance": "right"}], rad_cell_px=8)
    assert left.boxes.shape == (3, 4) and (left.boxes[:, 2] - left.boxes[:, 0] >= 8).all()
    centre = lambda r: float((r.boxes[:, 0] + r.boxes[:, 2]).mean())
    assert centre(left) < centre(right)
    assert all(len(a) <= len(b) for a, b in zip(per_frame, detect_instances(frames, model, processor, "a dolphin", 0.5)))
    with pytest.raises(ConfigError, match="cannot load the detector") as err:
        load_detector(str(tmp_path / "nothing"), field="edits[0].objects[0].source.detector")
    assert err.value.field == "edits[0].objects[0].source.detector"
