"""Issue 31's probe as a table: a new user's and a hostile user's inputs over the command lines
(scripts/edit.py, scripts/eval_loveu.py), the Python API, untrusted files (boxes JSON / CSV /
regions.json / masks / LOVEU CSV / prediction frames / sharded index.json), caches, outputs and
the browser app's helpers.

Every row ends in one of: the right result (checked against a reference); a clear error naming
the field (or flag, or file and line) and the fix, exit 2 for the CLIs, before any weights load
and with nothing written; a documented Python exception type. Row ids start with their group
(untrusted, inputs, caches, outputs, newuser, eval, app). No row loads a diffusion model; the
shipped shapes model is only named (its tokenizer and configs are read).

The rows import what they use inside themselves, so the table also runs against an older reatco
(PYTHONPATH) to count how it fared before."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from file_trees import tree_hashes

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "data" / "shapes-model"
SIZE, N_FRAMES = 64, 4
SOURCE_PROMPT = "a red circle and a blue square on a gray background"
EDIT_PROMPT = "a green circle and a yellow triangle on a gray background"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"hostile_{name}", ROOT / "reatco" / "commands" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


edit_script, eval_script = _script("edit"), _script("eval_loveu")



def _frames(folder: Path, n: int = 8, seed: int = 0, size=(SIZE, SIZE)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A sandbox: source frames, a finished edit folder (out/e), a folder for the rows' files."""
    root = tmp_path_factory.mktemp("hostile")
    _frames(root / "frames")
    (root / "files").mkdir()
    (root / "configs").mkdir()
    finished = root / "out" / "e"
    finished.mkdir(parents=True)
    for name, text in (("report.json", "{}"), ("regions.png", "old drawing"), ("config.yaml", "mine: 1")):
        (finished / name).write_text(text)
    return root


def _config(root: Path, **changes) -> dict:
    cfg = {
        "model": {"pretrained": str(SHAPES), "attention_cell_px": 8},
        "video": {"path": str(root / "frames"), "prompt": SOURCE_PROMPT, "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "sampling": {"steps": 3, "guidance_scale": 5.0, "seed": 1},
        "rad": {"refinement_thresholds": {0: 0.5}, "anchor_step_ratios": []},
        "output_dir": str(root / "out"),
        "cache_dir": str(root / "cache"),
        "edits": [{"name": "e", "prompt": EDIT_PROMPT,
                   "objects": [{"word": "green circle", "box": [0, 0, 32, 32]},
                               {"word": "yellow triangle", "box": [32, 32, 64, 64]}]}],
    }
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return cfg


def _write_config(root: Path, name: str, cfg: dict) -> Path:
    path = root / "configs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _run_cli(root: Path, capsys, script, argv) -> tuple[int, str]:
    """A command line in this process: its exit code and stderr; the sandbox (but the cache, the
    configs and the rows' input files) must be byte-identical afterwards, with no partial folder."""
    skip = (root / "cache", root / "configs", root / "files")
    before = tree_hashes(root, skip)
    try:
        code = script.main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert tree_hashes(root, skip) == before, "a file was written or changed"
    assert not [p for p in (root / "out").rglob("*") if ".partial" in p.name or ".kept" in p.name]
    assert "Traceback" not in err, err[-3000:]
    return code, err


def _edit_cli(root, capsys, name, cfg, extra=()):
    return _run_cli(root, capsys, edit_script, ["--config", str(_write_config(root, name, cfg)), "--quiet", *extra])


# ----------------------------------------------------------------------------- untrusted files (through scripts/edit.py)

REGIONS_DOC = {"width": SIZE, "height": SIZE, "objects": [{"word": "green circle", "frames": [
    {"frame": f, "box": [0, 0, 32, 32]} for f in range(N_FRAMES)]}]}


def _regions(**entry):
    doc = json.loads(json.dumps(REGIONS_DOC))
    doc["objects"][0]["frames"][0] = entry
    return doc


BOXES_FILE_ROWS = [
    # (id, file name, content (str | bytes | dict), words in the message)
    ("untrusted-json-width-zero", "w0.json", {"width": 0, "height": 64, "boxes": {"a": [[0, 0, 32, 32]] * 8}}, ["width"]),
    ("untrusted-json-width-null", "wn.json", {"width": None, "height": 64, "boxes": {"a": [[0, 0, 32, 32]] * 8}}, ["width"]),
    ("untrusted-json-width-text", "wt.json", {"width": "abc", "height": 64, "boxes": {"a": [[0, 0, 32, 32]] * 8}}, ["width"]),
    ("untrusted-json-keyframe-key-text", "kx.json", {"boxes": {"a": {"x": [0, 0, 32, 32]}}}, ["'x'", "whole number"]),
    ("untrusted-json-box-three-numbers", "b3.json", {"boxes": {"a": [[0, 0, 32]] * 8}}, ["4 finite numbers"]),
    ("untrusted-json-box-nan", "bn.json", '{"boxes": {"a": [[0, 0, NaN, 32], [0, 0, 32, 32]]}}', ["finite"]),
    ("untrusted-json-not-boxes", "s.json", '"hello"', ["expected"]),
    ("untrusted-json-objects-not-mappings", "o.json", {"width": 64, "height": 64, "objects": ["a"]}, ["objects[0]"]),
    ("untrusted-json-boxes-value-text", "bv.json", {"boxes": {"a": "xyz"}}, ["a list", "mapping"]),
    ("untrusted-regions-frame-missing", "r1.json", _regions(box=[0, 0, 32, 32]), ["frames[0]", "frame"]),
    ("untrusted-regions-frame-text", "r2.json", _regions(frame="abc", box=[0, 0, 32, 32]), ["'abc'", "whole number"]),
    ("untrusted-regions-frame-negative", "r3.json", _regions(frame=-4, box=[0, 0, 32, 32]), ["out of range"]),
    ("untrusted-regions-frame-twice", "r4.json", _regions(frame=1, box=[0, 0, 32, 32]), ["given twice"]),
    ("untrusted-box-outside-frame", "out1.json", {"width": 64, "height": 64, "boxes": {"a": [[70, 70, 90, 90]] * 8}}, ["outside"]),
    ("untrusted-box-partly-outside", "out2.json", {"width": 64, "height": 64, "boxes": {"a": [[-30, -30, 20, 20]] * 8}}, ["outside"]),
    ("untrusted-box-huge", "out3.json", {"width": 64, "height": 64, "boxes": {"a": [[0, 0, 1e300, 1e300]] * 8}}, ["outside"]),
    ("untrusted-csv-short-row", "short.csv", "frame,x1,y1,x2,y2\n0,0,0,32,32\n1,0,0\n", ["line 3", "columns"]),
    ("untrusted-csv-frame-nan", "nan.csv", "frame,x1,y1,x2,y2\nnan,0,0,32,32\n", ["line 2", "whole number"]),
    ("untrusted-csv-frame-inf", "inf.csv", "frame,x1,y1,x2,y2\ninf,0,0,32,32\n", ["line 2", "whole number"]),
    ("untrusted-csv-frame-fraction", "frac.csv", "frame,x1,y1,x2,y2\n1.5,0,0,32,32\n", ["line 2", "whole number"]),
    ("untrusted-csv-coordinate-inf", "cinf.csv", "frame,x1,y1,x2,y2\n0,0,0,inf,32\n", ["line 2", "finite"]),
    ("untrusted-csv-latin1", "latin.csv", "frame,name,x1,y1,x2,y2\n0,caf\u00e9,0,0,32,32\n".encode("latin-1"), ["UTF-8", "line 2"]),
    ("untrusted-csv-duplicate-frame", "dup.csv", "frame,x1,y1,x2,y2\n0,0,0,32,32\n0,1,1,33,33\n", ["line 3", "frame 0"]),
    ("untrusted-mot-frame-zero", "mot.csv", "0,1,0,0,32,32,1\n", ["count from 1"]),
    ("untrusted-json-not-utf8", "l1.json", '{"boxes": {"caf\u00e9": [[0, 0, 32, 32]]}}'.encode("latin-1"), ["UTF-8"]),
]


@pytest.mark.parametrize("name, content, words", [r[1:] for r in BOXES_FILE_ROWS], ids=[r[0] for r in BOXES_FILE_ROWS])
def test_untrusted_boxes_files(box, capsys, monkeypatch, name, content, words):
    _no_weights(monkeypatch)  # a file taken as valid would go on to load the model: the row fails there
    path = box / "files" / name
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg = _config(box, **{"edits.0.objects.0": {"word": "green circle", "boxes_file": str(path)}})
    code, err = _edit_cli(box, capsys, name.replace(".", "_"), cfg, ["--overwrite"])
    assert code == 2 and "edits[0].objects[0].boxes_file" in err and str(path) in err, err
    for word in words:
        assert word in err, (word, err)


def _regions_with_mask(folder: Path, mask_name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = json.loads(json.dumps(REGIONS_DOC))
    for item in doc["objects"][0]["frames"]:
        item["mask"] = mask_name
    (folder / "regions.json").write_text(json.dumps(doc))
    return folder / "regions.json"


@pytest.mark.parametrize("case, words", [
    ("climbs-out", ["leads outside"]),
    ("absolute", ["absolute path"]),
    ("symlink-out", ["leads outside"]),
    ("not-an-image", ["cannot read", "as an image"]),
], ids=["untrusted-regions-mask-climbs-out", "untrusted-regions-mask-absolute", "untrusted-regions-mask-symlink-out",
        "untrusted-regions-mask-not-an-image"])
def test_untrusted_regions_json_masks_stay_in_their_folder(box, capsys, monkeypatch, case, words):
    _no_weights(monkeypatch)
    secret = box / "outside_secret.png"
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(secret)
    folder = box / "files" / f"regions-{case}" / "edit"
    mask = {"climbs-out": "../../../outside_secret.png", "absolute": str(secret), "symlink-out": "masks/link.png",
            "not-an-image": "masks/notes.png"}[case]
    path = _regions_with_mask(folder, mask)
    (folder / "masks").mkdir(exist_ok=True)
    if case == "symlink-out":
        (folder / "masks" / "link.png").symlink_to(secret)
    if case == "not-an-image":
        (folder / "masks" / "notes.png").write_text("not a png")
    cfg = _config(box, **{"edits.0.objects.0": {"word": "green circle", "boxes_file": str(path)}})
    code, err = _edit_cli(box, capsys, f"mask_{case}", cfg, ["--overwrite"])
    assert code == 2 and "boxes_file" in err, err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("index, words", [
    ({"weight_map": {"a.weight": "../outside.safetensors"}}, ["model.tuned_unet", "file names"]),
    ({"weight_map": {"a.weight": "/etc/passwd"}}, ["model.tuned_unet", "file names"]),
    ({"weight_map": {"a.weight": "missing.safetensors"}}, ["model.tuned_unet", "not in"]),
    ("not json", ["model.tuned_unet", "JSON"]),
    ({"weights": {}}, ["model.tuned_unet", "weight_map"]),
], ids=["untrusted-index-climbs-out", "untrusted-index-absolute", "untrusted-index-missing-shard",
        "untrusted-index-not-json", "untrusted-index-no-weight-map"])
def test_untrusted_sharded_index_of_a_tuned_unet(box, capsys, monkeypatch, index, words):
    _no_weights(monkeypatch)
    folder = box / "files" / f"unet-{hashlib.md5(str(index).encode()).hexdigest()[:8]}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    code, err = _edit_cli(box, capsys, f"index_{folder.name}", _config(box, **{"model.tuned_unet": str(folder)}), ["--overwrite"])
    assert code == 2, err
    for word in words:
        assert word in err, (word, err)


def test_untrusted_16_bit_masks_and_frames_are_read_as_such(tmp_path):
    """untrusted: a 16-bit grey PNG (mask or frame) keeps its values (Pillow alone clips it to white)."""
    from reatco.regions.region import read_mask
    from reatco.video import read_video

    values = np.zeros((SIZE, SIZE), np.uint16)
    values[:, : SIZE // 2] = 65535  # left half white, right half black
    values[SIZE // 2:, SIZE // 2:] = 32768  # a mid grey corner
    _frames(tmp_path / "frames", n=2)
    for name in ("00000.png", "00001.png"):
        Image.fromarray(values).save(tmp_path / "frames" / name)
    Image.fromarray(values).save(tmp_path / "mask.png")
    mask = read_mask(str(tmp_path / "mask.png"), SIZE, SIZE, "mask")
    assert mask[:, : SIZE // 2].all() and not mask[: SIZE // 2, SIZE // 2:].any()
    video = read_video(tmp_path / "frames", SIZE, SIZE)
    grey = ((video[0, 0] + 1) * 127.5).round()
    assert float(grey[0, 0]) == 255 and float(grey[0, -1]) == 0 and abs(float(grey[-1, -1]) - 128) <= 1


def test_untrusted_a_file_box_inside_the_frame_is_used_as_given(tmp_path):
    """untrusted: the right result for a valid file (the strict reader refuses only what is wrong)."""
    from reatco.regions.files import read_boxes_file

    path = tmp_path / "b.csv"
    path.write_text("frame,x,y,w,h\n" + "".join(f"{f},{f},2,20,30\n" for f in range(N_FRAMES)))
    region = read_boxes_file(path, N_FRAMES, SIZE, SIZE, cell_px=8)
    assert region.boxes_px().tolist() == [[f, 2, f + 20, 32] for f in range(N_FRAMES)]


# ----------------------------------------------------------------------------- inputs (scripts/edit.py, no weights)

INPUT_ROWS = [
    # (id, changes to the config, extra argv, expected exit code, words in stderr)
    ("inputs-edits-as-a-mapping", {"edits": {"e": {"prompt": EDIT_PROMPT}}}, [], 2, ["edits", "list"]),
    ("inputs-threads-negative", {}, ["--threads", "-3"], 2, ["--threads", "negative"]),
    ("inputs-threads-text", {}, ["--threads", "many"], 2, ["--threads"]),
    ("inputs-steps-beyond-training", {"sampling.steps": 2000}, [], 2, ["sampling.steps", "1000"]),
    ("inputs-output-dir-not-writable", {}, ["--output_dir", "/proc/reatco-probe"], 2, ["output_dir", "cannot be written"]),
    ("inputs-source-cell-not-power-of-two", {"edits.0.objects.0": {"word": "green circle", "source": {"word": "red circle",
                                             "attention_cell_px": 3}}}, [], 2, ["edits[0].objects[0].source.attention_cell_px"]),
    ("inputs-source-cell-not-in-model", {"edits.0.objects.0": {"word": "green circle", "source": {"word": "red circle",
                                         "attention_cell_px": 32}}}, [], 2, ["source.attention_cell_px", "[8, 16]"]),
    ("inputs-model-cell-not-in-model", {"model.attention_cell_px": 32}, [], 2, ["model.attention_cell_px", "[8, 16]"]),
    ("inputs-detector-folder-missing", {"edits.0.objects.0": {"word": "green circle", "source": {
        "detector": "/nonexistent/owlvit", "query": "a circle"}}}, ["--overwrite"], 2, ["source.detector", "not a folder"]),
    ("inputs-trainable-modules-match-nothing", {"tune": {"enabled": True, "trainable_modules": ["no_such_module"]}}, ["--overwrite"], 2,
     ["tune.trainable_modules", "no_such_module"]),
    ("inputs-section-int", {"rad": 5}, [], 2, ["rad:", "mapping"]),
    ("inputs-section-list", {"video": [1, 2]}, [], 2, ["video:", "mapping"]),
    ("inputs-object-section-int", {"edits.0.objects.0": {"word": "green circle", "source": 3}}, [], 2,
     ["edits[0].objects[0].source", "mapping"]),
    ("inputs-word-comma", {"edits.0.prompt": "a green circle , and a yellow triangle",
                           "edits.0.objects.0": {"word": ",", "box": [0, 0, 32, 32]}}, [], 2, ["objects[0].word", "letter"]),
    ("inputs-word-emoji", {"edits.0.prompt": "a \U0001f7e2 and a yellow triangle",
                           "edits.0.objects.0": {"word": "\U0001f7e2", "box": [0, 0, 32, 32]}}, [], 2, ["objects[0].word", "letter"]),
    ("inputs-missing-clip-points-to-data-readme", {"video.path": "/nonexistent/dolphins.mp4"}, [], 2,
     ["video.path", "data/README.md"]),
    ("inputs-typed-box-outside", {"edits.0.objects.0.box": [70, 70, 90, 90]}, [], 2, ["objects[0].box", "outside"]),
    ("inputs-finished-edit-needs-overwrite", {}, [], 2, ["--overwrite"]),
]


def _no_weights(monkeypatch):
    """Any load of weights (the pipeline, a UNet, a VAE, a text encoder) fails the row."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    import reatco.pipeline
    from reatco.models import TuneAVideoUNet

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    for cls in (reatco.pipeline.ReAtCoPipeline, TuneAVideoUNet, AutoencoderKL, CLIPTextModel):
        monkeypatch.setattr(cls, "from_pretrained", no_weights)


@pytest.mark.parametrize("changes, extra, code, words", [r[1:] for r in INPUT_ROWS], ids=[r[0] for r in INPUT_ROWS])
def test_inputs_exit_2_naming_the_field_before_any_weights(box, capsys, monkeypatch, changes, extra, code, words):
    _no_weights(monkeypatch)
    name = hashlib.md5(repr((changes, extra)).encode()).hexdigest()[:10]
    got, err = _edit_cli(box, capsys, name, _config(box, **changes), extra)
    assert got == code, err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("pretrained", ["CompVis/stable-diffusion-v1-4", "someone/not-cached-model"],
                         ids=["newuser-weights-offline-sd", "newuser-weights-offline-other"])
def test_newuser_weights_that_cannot_be_had_fail_in_seconds_naming_model_pretrained(box, capsys, monkeypatch, pretrained):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _no_weights(monkeypatch)
    cfg = _config(box, **{"model": {"pretrained": pretrained, "attention_cell_px": 8}, "output_dir": str(box / "out-new")})
    start = time.perf_counter()
    code, err = _edit_cli(box, capsys, f"offline-{pretrained.replace('/', '_')}", cfg)
    assert code == 2 and time.perf_counter() - start < 20, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "model.pretrained" in lines[0] and "HF_HUB_OFFLINE" in lines[0], err
    assert "hf download" in lines[0] and "local folder" in lines[0]


def test_inputs_detector_on_an_offline_hub_fails_before_any_weights(box, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _no_weights(monkeypatch)
    cfg = _config(box, **{"edits.0.objects.0": {"word": "green circle", "source": {"detector": "someone/owl-not-cached",
                                                                                  "query": "a circle"}}})
    code, err = _edit_cli(box, capsys, "offline-detector", cfg, ["--overwrite"])
    assert code == 2 and "edits[0].objects[0].source.detector" in err and "HF_HUB_OFFLINE" in err, err


# ----------------------------------------------------------------------------- inputs from Python


def _shapes_config(box, **changes):
    from reatco.config_files import config_from_dict

    return config_from_dict(_config(box, **changes))


def test_inputs_pipeline_arguments_with_a_wrong_edit(box):
    from reatco import pipeline_arguments
    from reatco.errors import ConfigError

    cfg = _shapes_config(box)
    with pytest.raises(ConfigError, match=r"^edit: index 5 is out of range"):
        pipeline_arguments(cfg, 5)
    with pytest.raises(TypeError, match="edit is"):
        pipeline_arguments(cfg, 1.5)
    with pytest.raises(TypeError, match="loaded config"):
        pipeline_arguments({"edits": []})


def test_inputs_video_arrays_in_every_layout_give_the_same_clip(box):
    """inputs: uint8 channels last (the reference), uint8 channels first, float [0, 1], uint16,
    PIL images and a path all give the same (F, 3, H, W) clip in [-1, 1]."""
    from reatco.video import read_video, video_input

    reference = read_video(box / "frames", SIZE, SIZE, n_frames=N_FRAMES)
    uint8 = ((reference + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    variants = {
        "channels last": uint8,
        "channels first": uint8.transpose(0, 3, 1, 2),
        "float [0, 1]": uint8.astype(np.float32) / 255,
        "uint16": uint8.astype(np.uint16) * 257,
        "PIL": [Image.fromarray(f) for f in uint8],
        "path": str(box / "frames"),
    }
    for name, video in variants.items():
        got = video_input(video, SIZE, SIZE, n_frames=N_FRAMES if name == "path" else None)
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("video, words", [
    (np.full((2, SIZE, SIZE, 3), 2.0, np.float32), ["[0, 1]"]),
    (np.zeros((2, SIZE, SIZE, 5), np.uint8), ["3 colour channels"]),
    (np.zeros((SIZE, SIZE, 3), np.uint8), ["(F, H, W, 3)"]),
    ("/nonexistent/clip.mp4", ["does not exist"]),
    (42, ["takes a path"]),
], ids=["inputs-video-float-out-of-range", "inputs-video-five-channels", "inputs-video-one-frame", "inputs-video-missing-path",
        "inputs-video-number"])
def test_inputs_bad_videos_from_python(video, words):
    from reatco.errors import ConfigError
    from reatco.video import video_input

    with pytest.raises(ConfigError) as caught:
        video_input(video, SIZE, SIZE)
    assert str(caught.value).startswith("video") and all(w in str(caught.value) for w in words), caught.value


def test_inputs_mask_tensors_from_python():
    """inputs: bool and float mask tensors are regions; a wrong one is refused by shape and dtype,
    never with the tensor printed."""
    from reatco.errors import ConfigError
    from reatco.regions.parsing import parse_region
    from reatco.regions.settings import object_settings

    bool_mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    bool_mask[8:40, 8:40] = True
    region = parse_region(object_settings({"word": "cat", "mask": bool_mask}), N_FRAMES, SIZE, SIZE, 8)
    assert region.kind == "mask" and torch.equal(region.pixel_masks[2], bool_mask)
    per_frame = parse_region(object_settings({"word": "cat", "mask": bool_mask.float()[None].repeat(N_FRAMES, 1, 1) * 0.9}), N_FRAMES, SIZE, SIZE, 8)
    assert torch.equal(per_frame.pixel_masks, region.pixel_masks)
    half = parse_region(object_settings({"word": "cat", "mask": bool_mask[::2, ::2]}), N_FRAMES, SIZE, SIZE, 8)  # resized to the clip
    assert torch.equal(half.pixel_masks[0], bool_mask)
    with pytest.raises(ConfigError) as caught:
        parse_region(object_settings({"word": "cat", "mask": torch.ones(3, 5, 7, 9)}), N_FRAMES, SIZE, SIZE, 8)
    assert "objects[0].mask" in str(caught.value) and "shape (3, 5, 7, 9)" in str(caught.value) and len(str(caught.value)) < 300
    with pytest.raises(ConfigError, match="tensor"):
        parse_region(object_settings({"word": "cat", "mask": 3.5}), N_FRAMES, SIZE, SIZE, 8)


# ----------------------------------------------------------------------------- caches


def test_caches_file_hashes_holding_garbage_are_rebuilt(tmp_path):
    from reatco.fingerprint import digest_path

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"weights")
    memo = tmp_path / "file_hashes.json"
    expected = digest_path(tmp_path / "model")
    for garbage in ("[1, 2, 3]", "42", '{"x": [1, 2]}', "not json", json.dumps({str((tmp_path / "model" / "w.bin").resolve()): [1, 2, 3, 4, 5]})):
        memo.write_text(garbage)
        assert digest_path(tmp_path / "model", memo) == expected, garbage
        assert isinstance(json.loads(memo.read_text()), dict)


def test_caches_an_inversion_entry_that_is_a_folder_is_recomputed(tmp_path, caplog):
    from reatco.backbones.inversion import load_or_invert

    (tmp_path / "k.pt").mkdir()
    (tmp_path / "k.pt" / "junk").write_text("x")
    with caplog.at_level(logging.WARNING):
        got = load_or_invert(tmp_path, "k", lambda: torch.ones(2, 3))
    assert torch.equal(got, torch.ones(2, 3)) and (tmp_path / "k.pt").is_file() and "folder" in caplog.text
    assert torch.equal(load_or_invert(tmp_path, "k", lambda: torch.zeros(1)), torch.ones(2, 3))  # and reused


# ----------------------------------------------------------------------------- outputs


def test_outputs_a_result_finished_meanwhile_is_never_replaced(tmp_path):
    """outputs: the check runs at the moment of replacing (a concurrent run finished first): the
    finished result stays byte-identical and the new one is kept beside it."""
    from reatco.files import ResultExistsError, new_partial_dir, replace_dir

    final = tmp_path / "out" / "e"
    final.mkdir(parents=True)
    (final / "report.json").write_text('{"seed": 1}')
    new = new_partial_dir(final)
    (new / "report.json").write_text('{"seed": 2}')
    with pytest.raises(ResultExistsError) as caught:
        replace_dir(new, final, replace_finished=False)
    assert (final / "report.json").read_text() == '{"seed": 1}'
    assert (caught.value.kept / "report.json").read_text() == '{"seed": 2}' and caught.value.kept.parent == final.parent
    assert not [p for p in final.parent.iterdir() if ".partial" in p.name]


def test_outputs_the_runner_refuses_at_the_moment_of_replacing(box, tmp_path):
    """outputs: EditRunner(overwrite=False) writing over an edit another run finished meanwhile:
    exit-2 error naming --overwrite and where the new result is; nothing replaced."""
    from reatco.errors import ConfigError
    from reatco.runner import EditResult, EditRunner

    cfg = _shapes_config(box, output_dir=str(tmp_path / "out"))
    runner = EditRunner(cfg, progress=False, overwrite=False)
    prepared = runner.prepare()[0]
    final = tmp_path / "out" / "e"
    final.mkdir(parents=True)
    (final / "report.json").write_text("finished by another run")
    frames = np.zeros((N_FRAMES, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"^--overwrite: .*finished by another run.*kept") as caught:
        runner.write_outputs(prepared, EditResult("e", frames, None, {"seed": 1}, None))
    assert (final / "report.json").read_text() == "finished by another run"
    kept = [p for p in final.parent.iterdir() if ".kept-" in p.name]
    assert len(kept) == 1 and str(kept[0]) in str(caught.value) and (kept[0] / "report.json").is_file()


def test_outputs_dry_run_never_rewrites_a_finished_edit(box, capsys):
    finished = box / "out" / "e"
    before = tree_hashes(finished)
    code = edit_script.main(["--config", str(_write_config(box, "dry", _config(box))), "--quiet", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and tree_hashes(finished) == before
    drawing = box / "out" / "e.dry-run-regions.png"
    assert drawing.is_file() and str(drawing) in out
    drawing.unlink()


def test_outputs_stale_partial_folders_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    from reatco.files import new_partial_dir

    final = tmp_path / "e"
    dead = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE, text=True)
    dead_pid = int(dead.communicate()[0])
    stale = new_partial_dir(final)
    owner = json.loads(stale.with_name(stale.name + ".owner").read_text())
    stale.with_name(stale.name + ".owner").write_text(json.dumps({**owner, "pid": dead_pid, "start": "0"}))
    (stale / "frames").mkdir()
    live = new_partial_dir(final)  # this process: alive
    other_host = new_partial_dir(final)
    other_host.with_name(other_host.name + ".owner").write_text(json.dumps({**owner, "host": "elsewhere", "pid": dead_pid}))
    unowned = tmp_path / ".e.partial-old"  # an older reatco's: no owner record, left alone
    unowned.mkdir()
    new_partial_dir(final)
    assert not stale.exists() and not stale.with_name(stale.name + ".owner").exists()
    assert live.exists() and other_host.exists() and unowned.exists()


# ----------------------------------------------------------------------------- new user


def test_newuser_a_shattered_word_is_warned_about(box, caplog):
    from reatco.runner import EditRunner

    cfg = _shapes_config(box, **{"edits.0.prompt": "a elephant and a yellow triangle on a gray background",
                                 "edits.0.objects.0": {"word": "elephant", "box": [0, 0, 32, 32]}})
    with caplog.at_level(logging.WARNING):
        EditRunner(cfg, progress=False).prepare()
    assert "'elephant'" in caplog.text and "pieces" in caplog.text and "edits[0].objects[0].word" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        EditRunner(_shapes_config(box), progress=False).prepare()  # words the model knows: no warning
    assert "pieces" not in caplog.text


def test_newuser_half_precision_on_a_cpu_is_warned_about(box, caplog):
    from reatco.runner import EditRunner

    with caplog.at_level(logging.WARNING):
        EditRunner(_shapes_config(box, **{"model.dtype": "float16", "model.device": "cpu"}), progress=False)
    assert "float16 on a CPU" in caplog.text and "float32" in caplog.text


def test_newuser_no_confusing_kept_in_float32_warning(caplog):
    from diffusers.utils import logging as diffusers_logging

    from reatco.models import TuneAVideoUNet

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            unet = TuneAVideoUNet.from_pretrained(SHAPES, subfolder="unet", torch_dtype=torch.bfloat16)
    finally:
        diffusers_logging.disable_propagation()
    assert unet.dtype == torch.bfloat16 and "kept in float32" not in caplog.text


def test_newuser_outputs_go_where_the_yaml_says(tmp_path):
    """newuser: one rule — a YAML's paths (output_dir too) are relative to the file; a
    command-line path to the working directory."""
    from reatco.config_files import load_config

    (tmp_path / "cfgs").mkdir()
    cfg = _config(tmp_path, output_dir="../results", cache_dir="cache")
    cfg["video"]["path"] = "../frames"
    _frames(tmp_path / "frames")
    (tmp_path / "cfgs" / "c.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(tmp_path / "cfgs" / "c.yaml")
    assert loaded.output_dir == str(tmp_path / "results") and loaded.cache_dir == str(tmp_path / "cfgs" / "cache")
    assert loaded.video.path == str(tmp_path / "frames")
    overridden = load_config(tmp_path / "cfgs" / "c.yaml", ["output_dir=elsewhere"])
    assert overridden.output_dir == "elsewhere"  # the command line's: relative to the working directory
    demo = load_config(ROOT / "configs" / "shapes.yaml")
    assert demo.output_dir == str(ROOT / "outputs" / "shapes")  # the documented place, from any working directory


# ----------------------------------------------------------------------------- eval_loveu.py


def _eval_argv(box, cfg_path, pred_root, out):
    return ["--configs", str(cfg_path), "--pred_root", str(pred_root), "--out", str(out), "--metrics", "psnr", "--no_run"]


def _pred_folder(pred_root: Path, cfg_path: Path) -> Path:
    return pred_root / "configs" / cfg_path.stem / "e"


@pytest.mark.parametrize("case, words", [
    ("jpg-not-an-image", ["--pred_root", "cannot read", "as an image"]),
    ("mixed-sizes", ["--pred_root", "differ in size"]),
    ("source-without-regions", ["--pred_root", "regions.json", "source:"]),
], ids=["eval-jpg-not-an-image", "eval-mixed-sizes", "eval-source-without-regions"])
def test_eval_bad_predictions_exit_2(box, capsys, case, words):
    changes = {"edits.0.objects.0": {"word": "green circle", "source": {"word": "red circle"}}} if case == "source-without-regions" else {}
    cfg_path = _write_config(box, f"eval_{case.replace('-', '_')}", _config(box, **changes))
    pred_root = box / "out" / f"pred-{case}"
    folder = _frames(_pred_folder(pred_root, cfg_path), n=N_FRAMES)
    if case == "jpg-not-an-image":
        (folder / "00001.png").unlink()
        (folder / "00001.jpg").write_text("not an image")
    if case == "mixed-sizes":
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "00002.png")
    code, err = _run_cli(box, capsys, eval_script, _eval_argv(box, cfg_path, pred_root, box / "out" / f"eval-{case}"))
    assert code == 2, err
    for word in words:
        assert word in err, (word, err)


def test_eval_a_non_utf8_loveu_csv_exits_2(box, capsys):
    data = box / "files" / "loveu"
    (data / "DAVIS_480p" / "480p_frames").mkdir(parents=True)
    _frames(data / "DAVIS_480p" / "480p_frames" / "fish", n=2)
    (data / "LOVEU-TGVE-2023_Dataset.csv").write_bytes(
        ("Video name,Our GT caption,Style Change Caption,Object Change Caption,Background Change Caption,Multiple Changes Caption\n"
         "DAVIS Videos:,,,,,\nfish,Poissons \u00e0 l'eau.,x,y,z,w\n").encode("latin-1"))
    code, err = _run_cli(box, capsys, eval_script, ["--data_root", str(data), "--pred_root", str(box / "out" / "pl"),
                                                    "--out", str(box / "out" / "el"), "--metrics", "psnr", "--no_run"])
    assert code == 2 and "LOVEU-TGVE-2023_Dataset.csv" in err and "UTF-8" in err and "line 3" in err, err


def test_eval_weights_that_cannot_be_had_exit_2_before_any_edit(box, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg_path = _write_config(box, "eval_offline", _config(box, **{"model.pretrained": "CompVis/stable-diffusion-v1-4"}))
    argv = ["--configs", str(cfg_path), "--pred_root", str(box / "out" / "po"), "--out", str(box / "out" / "eo"), "--metrics", "psnr"]
    code, err = _run_cli(box, capsys, eval_script, argv)
    assert code == 2 and "model.pretrained" in err and "HF_HUB_OFFLINE" in err, err


def test_eval_scores_a_boxes_file_at_the_frames_the_edit_used(box, tmp_path):
    """eval: with video.start_frame ≠ 0 the scored region is the edit's (file frames 2…5), not
    the file's first frames."""
    from reatco.config_files import load_config
    from reatco.metrics import evaluate as ev
    from reatco.metrics import loveu_run
    from reatco.runner import EditRunner

    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": {"a": [[4 * f, 4 * f, 4 * f + 24, 4 * f + 24] for f in range(8)]}}))
    cfg_path = _write_config(box, "eval_boxes", _config(box, **{"video.start_frame": 2, "edits.0.objects.0": {
        "word": "green circle", "boxes_file": str(boxes)}}))
    edit = ev.config_edits([cfg_path])[0]
    cfg = load_config(cfg_path)
    used = EditRunner(cfg, progress=False).prepare()[0].regions[0]
    scored = loveu_run.edit_regions(cfg, edit)[0]
    assert used.boxes_px().tolist()[0] == [8, 8, 32, 32]
    assert torch.equal(scored.boxes_px(), used.boxes_px())


def test_eval_scores_found_regions_from_the_runs_regions_json(box):
    from reatco.config_files import load_config
    from reatco.metrics import evaluate as ev
    from reatco.metrics import loveu_run
    from reatco.regions.files import write_regions
    from reatco.regions.parsing import parse_region
    from reatco.regions.settings import object_settings

    cfg_path = _write_config(box, "eval_found", _config(box, **{"edits.0.objects.0": {"word": "green circle",
                                                                                       "source": {"word": "red circle"}}}))
    cfg = load_config(cfg_path)
    edit = ev.config_edits([cfg_path])[0]
    found = parse_region(object_settings({"word": "x", "boxes": [[f, 0, f + 24, 24] for f in range(N_FRAMES)]}), N_FRAMES, SIZE, SIZE, 8)
    typed = parse_region(cfg.edits[0].objects[1], N_FRAMES, SIZE, SIZE, 8)
    folder = box / "files" / "found-pred"
    write_regions(folder, [found, typed], ["green circle", "yellow triangle"], frame_numbers=list(range(N_FRAMES)))
    regions = loveu_run.edit_regions(cfg, edit, folder)
    assert torch.equal(regions[0].boxes_px(), found.boxes_px()) and torch.equal(regions[1].boxes_px(), typed.boxes_px())


# ----------------------------------------------------------------------------- the browser app's helpers


def test_app_uploads_become_plain_paths(tmp_path):
    from gradio.utils import NamedString

    from reatco.interactive import uploaded_path

    clip = str(tmp_path / "clip.mp4")
    for upload in (NamedString(clip), type("F", (), {"name": clip})(), {"path": clip}, [NamedString(clip)]):
        got = uploaded_path(upload)
        assert got == clip and type(got) is str, upload
    frames = _frames(tmp_path / "up", n=3)
    folder = Path(uploaded_path([NamedString(str(p)) for p in sorted(frames.iterdir(), reverse=True)]))
    assert [p.name for p in sorted(folder.iterdir())] == ["00000.png", "00001.png", "00002.png"]
    assert (folder / "00000.png").resolve() == (frames / "00000.png").resolve()
    assert uploaded_path(None) is None and uploaded_path("") is None


def test_app_an_uploaded_clip_builds_a_config(box):
    from gradio.utils import NamedString

    from reatco.config_files import config_from_dict
    from reatco.interactive import ObjectDraft, build_config

    base = config_from_dict(_config(box))
    cfg = build_config(base, NamedString(str(box / "frames")), SOURCE_PROMPT, EDIT_PROMPT,
                       [ObjectDraft(word="green circle", keyframes={0: [0, 0, 32, 32]})])
    assert cfg.video.path == str(box / "frames") and type(cfg.video.path) is str


def test_app_a_clip_changed_on_disk_is_read_again(box, tmp_path):
    from reatco.config_files import config_from_dict
    from reatco.interactive import EditSession

    _frames(tmp_path / "clip", seed=1)
    cfg = config_from_dict({**_config(box), "video": {**_config(box)["video"], "path": str(tmp_path / "clip")}})
    session = EditSession(progress=False)
    first = session.frames(cfg).copy()
    runner = session.runner_for(cfg)
    assert session.runner_for(cfg) is runner and runner._video is not None  # unchanged: all of it reused
    _frames(tmp_path / "clip", seed=2)  # the clip rewritten in place, same names
    second = session.frames(cfg)
    assert not np.array_equal(first, second)
    assert session.runner_for(cfg) is runner  # the model is kept; the clip, its latents and inversion are not
    from reatco.video import read_video, to_uint8

    assert np.array_equal(second, to_uint8((read_video(tmp_path / "clip", SIZE, SIZE, N_FRAMES) + 1) / 2))


# ----------------------------------------------------------------------------- one object path (issue 30)


def test_pipeline_arguments_reads_a_boxes_file_objects_track(box, tmp_path):
    """The notebook bridge takes a boxes_file object whole: its region is the named track's boxes
    from the file (track "b" would be the other corner)."""
    from reatco import pipeline_arguments

    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({"boxes": {"a": [[0, 0, 32, 32]] * 8, "b": [[32, 32, 64, 64]] * 8}}))
    cfg = _shapes_config(box, **{"edits.0.objects.0": {"word": "green circle", "boxes_file": str(boxes), "track": "a"}})
    obj = pipeline_arguments(cfg)["objects"][0]
    assert obj["word"] == "green circle"
    used = obj["region"].boxes
    assert used.shape[0] == cfg.video.n_frames and (used == used.new_tensor([0, 0, 32, 32])).all()


def test_pipeline_arguments_keeps_source_objects():
    from reatco import pipeline_arguments
    from reatco.config_files import load_config

    cfg = load_config(ROOT / "configs" / "shapes-auto.yaml")
    objects = pipeline_arguments(cfg)["objects"]
    assert all(o.get("source") is not None for o in objects)
