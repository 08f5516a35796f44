"""boxes_file: the formats trackers and reatco write, frame mapping, scaling, errors; regions.json round trip."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reatco.config_files import config_from_dict
from reatco.errors import ConfigError
from reatco.regions.files import read_boxes_file, write_regions
from reatco.regions.region import Region
from reatco.regions.parsing import parse_region

ROOT = Path(__file__).resolve().parents[1]
TRUTH = ROOT / "data" / "shapes-demo" / "truth.json"


def test_shapes_demo_truth_loads_per_object():
    truth = json.loads(TRUTH.read_text())["boxes"]
    for name, boxes in truth.items():
        region = read_boxes_file(TRUTH, 8, 64, 64, cell_px=8, track=name)
        assert region.kind == "boxes" and region.boxes.tolist() == [[float(v) for v in b] for b in boxes]
    with pytest.raises(ConfigError, match="holds 2 objects .*red circle.*track"):
        read_boxes_file(TRUTH, 8, 64, 64, field="edits[0].objects[0].boxes_file")
    with pytest.raises(ConfigError, match="green thing.*is not an object") as err:
        read_boxes_file(TRUTH, 8, 64, 64, track="green thing", field="edits[0].objects[0].boxes_file")
    assert err.value.field == "edits[0].objects[0].track"


def test_start_stride_and_scaling_to_the_working_size(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"width": 128, "height": 64, "boxes": {"a": [[0, 0, 16, 16], None, [8, 8, 24, 24], None, [16, 16, 32, 32]]}}))
    # clip frames 0, 1 read file frames 0, 2; frame 2 reads file frame 4; x halves (128 → 64 px)
    region = read_boxes_file(path, 3, 64, 64, track="a", start_frame=0, frame_stride=2)
    assert region.boxes.tolist() == [[0, 0, 8, 16], [4, 8, 12, 24], [8, 16, 16, 32]]
    # a frame the file skips is interpolated between its neighbours
    region = read_boxes_file(path, 3, 64, 128, track="a", start_frame=0, frame_stride=1)
    assert region.boxes[1].tolist() == [4, 4, 20, 20]


def test_mot_csv_counts_frames_from_one_and_uses_the_native_size(tmp_path):
    path = tmp_path / "track.txt.csv"
    path.write_text("1,7,10,20,30,40,0.9,-1,-1,-1\n2,7,12,20,30,40,0.9,-1,-1,-1\n1,8,0,0,5,5,1,-1,-1,-1\n")
    region = read_boxes_file(path, 2, 64, 64, track=7, native_size=(128, 128))  # pixels of a 128² source
    assert region.boxes.tolist() == [[5, 10, 20, 30], [6, 10, 21, 30]]


def test_headed_csv_xywh_and_xyxy(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("frame,object,x,y,w,h\n0,dog,1,2,10,10\n1,dog,2,2,10,10\n")
    b = tmp_path / "b.csv"
    b.write_text("frame,x1,y1,x2,y2\n0,1,2,11,12\n1,2,2,12,12\n")
    assert read_boxes_file(a, 2, 32, 32, track="dog").boxes.tolist() == read_boxes_file(b, 2, 32, 32).boxes.tolist()
    bad = tmp_path / "bad.csv"
    bad.write_text("frame,a,b\n0,1,2\n")
    with pytest.raises(ConfigError, match="x1, y1, x2, y2 or x, y, w, h"):
        read_boxes_file(bad, 2, 32, 32)


def test_file_errors_name_the_field(tmp_path):
    path = tmp_path / "late.json"
    path.write_text(json.dumps([[0, 0, 8, 8]] * 3))
    with pytest.raises(ConfigError, match="no box for the clip's frames 5…6") as err:
        read_boxes_file(path, 2, 32, 32, start_frame=5, field="edits[0].objects[1].boxes_file")
    assert err.value.field == "edits[0].objects[1].boxes_file"
    path.write_text(json.dumps([[0, 0, 8, 8], [9, 0, 2, 8]]))
    with pytest.raises(ConfigError, match="frame 1: box .* inverted"):
        read_boxes_file(path, 2, 32, 32)
    with pytest.raises(ConfigError, match="does not exist"):
        read_boxes_file(tmp_path / "missing.json", 2, 32, 32)


def test_regions_json_round_trip_boxes_and_masks(tmp_path):
    boxes = Region("boxes", 2, 32, 32, boxes=torch.tensor([[0.0, 0, 16, 16], [4, 4, 20, 20]], dtype=torch.float64))
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 2:9, 3:12] = True
    masks[1, 10:20, 10:30] = True
    mask = Region("mask", 2, 32, 32, pixel_masks=masks)
    path = write_regions(tmp_path, [boxes, mask], ["rabbit", "horse"], ["box", "mask"])
    doc = json.loads(path.read_text())
    assert [o["word"] for o in doc["objects"]] == ["rabbit", "horse"]
    assert doc["objects"][1]["frames"][0] == {"frame": 0, "box": [3, 2, 12, 9], "mask": "masks/1/00000.png"}
    again = read_boxes_file(path, 2, 32, 32, track="rabbit")
    assert again.kind == "boxes" and torch.equal(again.boxes, boxes.boxes)
    again = read_boxes_file(path, 2, 32, 32, track="horse")
    assert again.kind == "mask" and torch.equal(again.pixel_masks, masks)
    # numbered as the source video's frames: a clip from frame 10, every 2nd, reads them back
    path = write_regions(tmp_path / "later", [boxes], ["rabbit"], frame_numbers=[10, 12])
    assert [f["frame"] for f in json.loads(path.read_text())["objects"][0]["frames"]] == [10, 12]
    assert torch.equal(read_boxes_file(path, 2, 32, 32, start_frame=10, frame_stride=2).boxes, boxes.boxes)


def test_config_takes_boxes_file_relative_to_the_yaml(tmp_path):
    (tmp_path / "regions").mkdir()
    (tmp_path / "regions" / "t.json").write_text(TRUTH.read_text())
    cfg = config_from_dict({
        "model": {"pretrained": "x", "attention_cell_px": 8},
        "video": {"path": str(ROOT / "data" / "shapes-demo" / "frames"), "prompt": "p", "height": 64, "width": 64},
        "edits": [{"name": "e", "prompt": "a green circle", "objects": [
            {"word": "green circle", "boxes_file": "regions/t.json", "track": "red circle"}]}],
    }, base_dir=tmp_path)
    obj = cfg.edits[0].objects[0]
    assert obj.boxes_file == str(tmp_path / "regions" / "t.json")
    region = parse_region(obj, 8, 64, 64, 8)
    assert region.boxes[0].tolist() == [25, 41, 47, 63]
    with pytest.raises(ConfigError, match="exactly one of box, boxes, mask, boxes_file or source") as err:
        config_from_dict({
            "model": {"pretrained": "x"}, "video": {"path": "v", "prompt": "p"},
            "edits": [{"name": "e", "prompt": "a cat", "objects": [{"word": "cat", "box": [0, 0, 64, 64], "boxes_file": "f.json"}]}],
        }, check_paths=False)
    assert err.value.field == "edits[0].objects[0]"
