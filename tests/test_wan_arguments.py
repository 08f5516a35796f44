"""A Wan config from Python and in pictures: `pipeline_arguments` gives the keyword arguments of
`WanReAtCoPipeline.__call__` for one edit, so that a notebook's call gives what `scripts/edit.py`
writes; `scripts/demo_strip.py` draws a Wan run (tests/tiny_wan.py's model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from reatco import load_config, pipeline_arguments
from reatco.backbones import edit_runner
from reatco.video import write_frames

from tiny_wan import save_tiny_wan


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-args")
    save_tiny_wan(root / "model")
    rng = np.random.default_rng(1)
    write_frames(rng.integers(0, 255, size=(8, 32, 48, 3), dtype=np.uint8), root / "clip")
    cfg = {
        "model": {"pretrained": str(root / "model"), "attention_cell_px": 16, "dtype": "float32"},
        "video": {"path": str(root / "clip"), "prompt": "a red circle on the sea", "height": 32, "width": 48,
                  "n_frames": 8, "pad_frames": True},
        "sampling": {"steps": 3, "guidance_scale": 3.0, "seed": 5},
        "rad": {"max_update_steps": 2, "refinement_thresholds": {0: 0.5}, "max_refinement_iters": 1},
        "output_dir": str(root / "out"), "cache_dir": str(root / "cache"), "save_attention": False,
        "edits": [{"name": "square", "prompt": "a red square on the sea", "sampling": {"seed": 9},
                   "objects": [{"word": "square", "boxes": {0: [0, 0, 32, 32], 7: [16, 0, 48, 32]}}]}],
    }
    path = root / "wan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return SimpleNamespace(cfg=load_config(path), root=root)


def test_a_wan_configs_arguments_give_the_edit_the_runner_writes(workspace):
    from reatco.backbones.wan import WanReAtCoPipeline

    config = workspace.cfg
    args = pipeline_arguments(config, "square")
    # Wan's call: its frame handling and the source prompt it inverts with, none of the UNet's arguments
    assert args["n_frames"] == 8 and args["pad_frames"] is True and args["source_prompt"] == "a red circle on the sea"
    assert "attention_cell_px" not in args and "inversion_prompt" not in args
    assert args["generator"].initial_seed() == 9  # the edit's own sampling override
    pipe = WanReAtCoPipeline.from_pretrained(config.model.pretrained)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**args)
    frames = (out.frames[0] * 255).round().astype(np.uint8)
    assert frames.shape == (8, 32, 48, 3) and out.rad_losses  # the padded frame dropped; RAD ran
    runner = edit_runner(config, progress=False)
    result = runner.run(runner.prepare()[0], write=False)
    np.testing.assert_array_equal(frames, result.frames)  # the same inversion, start and steps: the same frames


def test_the_demo_strip_draws_a_wan_run(workspace, capsys):
    from PIL import Image

    from scripts_loader import load_script

    path = workspace.root / "wan.yaml"
    assert load_script("edit").main(["--config", str(path), "--overwrite", "--quiet"]) == 0
    out = workspace.root / "strip.png"
    assert load_script("demo_strip").main(["--config", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    strip = np.asarray(Image.open(out).convert("RGB"))
    row = round(32 * 128 / 48)  # 48 × 32 frames drawn 128 px wide
    assert strip.shape == (2 * row, 8 * 128, 3)  # the clip's 8 frames (the padded one dropped), source over edit
    edited = np.asarray(Image.open(workspace.root / "out" / "square" / "frames" / "00003.png").convert("RGB"))
    assert (strip[row + 40, 3 * 128 + 100] == edited[15, 37]).all()  # nearest resize: 128 / 48 px a pixel
    assert (strip[row:row + 80, 0] == 255).all()  # the square's box [0, 0, 32, 32] outlined in white on frame 0
