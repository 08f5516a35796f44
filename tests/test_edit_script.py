"""scripts/edit.py end to end on a tiny Stable-Diffusion-layout folder, and its input errors."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from reatco.video import read_video, write_video

from tiny_models import save_tiny_sd

ROOT = Path(__file__).resolve().parent.parent
N_FRAMES, SIZE = 3, 32


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "reatco" / "commands" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


edit_script = _load_script("edit")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    save_tiny_sd(root / "model")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(N_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    write_video(frames, root / "source.mp4", fps=4)
    return root


def _config(root, **changes):
    cfg = {
        "model": {"pretrained": str(root / "model"), "attention_cell_px": 8},
        "video": {"path": str(root / "source.mp4"), "prompt": "a cat and a dog", "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "tune": {"enabled": True, "steps": 2, "learning_rate": 1e-4},
        "sampling": {"steps": 3, "guidance_scale": 3.0, "seed": 5},
        "irjs": {"placement": "before_step"},
        "rad": {"max_update_steps": 2, "refinement_thresholds": {0: 0.5}, "max_refinement_iters": 1},
        "output_dir": str(root / "out"),
        "cache_dir": str(root / "cache"),
        "edits": [
            {
                "name": "swap",
                "prompt": "a rabbit and a horse",
                "objects": [
                    {"word": "rabbit", "box": [0, 0, 16, 16]},
                    {"word": "horse", "boxes": {0: [16, 16, 32, 32], 2: [16, 8, 32, 24]}},
                ],
            }
        ],
    }
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    path = root / f"config-{len(list(root.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_edit_writes_every_output(workspace, capsys):
    config = _config(workspace)
    assert edit_script.main(["--config", str(config), "--quiet"]) == 0
    out = workspace / "out" / "swap"
    for name in ("edited.mp4", "edited.gif", "attention.mp4", "regions.png", "config.yaml", "report.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "frames").glob("*.png"))) == N_FRAMES
    assert read_video(out / "edited.mp4", SIZE, SIZE).shape == (N_FRAMES, 3, SIZE, SIZE)
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 5 and report["token_indices"] == {"rabbit": [2], "horse": [5]}
    assert [r["step"] for r in report["rad_losses"]] == [0, 1]
    assert {"torch", "diffusers"} <= set(report["versions"]) and "edit" in report["timings_s"]
    assert report["unet"]["source"] == "tuned"
    tuned = Path(report["unet"]["path"])
    assert tuned.parent == workspace / "cache" / "tuned" and (tuned / "config.json").is_file()  # tuned once, cached
    assert list((workspace / "cache" / "inversion").glob("*.pt"))
    assert "rabbit" in capsys.readouterr().out
    _check_explaining_outputs(out, config, report)

    # A rerun does not replace the finished edit silently: exit 2, naming the folder and the flag.
    first = sorted((out / "frames").glob("*.png"))
    first_bytes = [p.read_bytes() for p in first]
    report_bytes = (out / "report.json").read_bytes()
    assert edit_script.main(["--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(out) in err and (out / "report.json").read_bytes() == report_bytes

    # With --overwrite, it reuses the tuned UNet and the inversion and reproduces the frames exactly.
    assert edit_script.main(["--config", str(config), "--quiet", "--only", "swap", "--overwrite"]) == 0
    assert [p.read_bytes() for p in sorted((out / "frames").glob("*.png"))] == first_bytes
    again = json.loads((out / "report.json").read_text())
    assert "tune" not in again["timings_s"] and again["unet"] == {**report["unet"], "source": "cache"}


def _check_explaining_outputs(out, config, report):
    from reatco.config_files import load_config

    # each stage timed on its own: loading the editing pipeline is not the tuning
    timings = report["timings_s"]
    assert {"tune", "load", "invert", "edit"} <= set(timings) and timings["load"] < timings["tune"]
    # regions.png: every frame at a readable size (192 px a frame), the words in a legend
    regions = np.asarray(Image.open(out / "regions.png").convert("RGB"))
    assert regions.shape[1] >= N_FRAMES * 192 and regions.shape[0] >= 192
    # attention.mp4: a frame per source frame; rows per word, columns per shown step and the mean
    attention = read_video(out / "attention.mp4", 64, 64)
    assert len(attention) == N_FRAMES
    import imageio.v3 as iio

    first = iio.imread(out / "attention.mp4", plugin="pyav", index=0)
    assert first.shape[0] >= 2 * 160 and first.shape[1] >= 3 * 160  # 2 words × (steps 0, 1 and the mean)
    # config.yaml: input paths relative to its folder, and it loads back to the same inputs
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert not Path(saved["video"]["path"]).is_absolute() and not Path(saved["model"]["pretrained"]).is_absolute()
    again, original = load_config(out / "config.yaml"), load_config(config)
    assert again.video.path == original.video.path and again.model.pretrained == original.model.pretrained


def test_attention_video_shares_one_scale_and_outlines_the_regions():
    import torch

    from reatco.visualize import attention_video, heat_colormap

    frames = np.zeros((2, 32, 32, 3), np.uint8)
    strong = torch.zeros(2, 2, 4, 4)
    strong[0, :, :2, :2] = 0.8  # word 0: attention in its top-left cells
    strong[1, :, :, :] = 0.1  # word 1: a weak, flat map
    boxes = np.array([[[0, 0, 16, 16]] * 2, [[16, 16, 32, 32]] * 2], float)
    video = attention_video(frames, [("step 0", strong), ("mean", strong)], ["cat", "dog"], boxes, panel_px=64, alpha=1.0)
    assert video.shape[0] == 2
    frame = video[0].astype(int)
    # the weak map stays weak: its colour is the colour bar's at 0.1 / 0.8, not its own maximum's
    expected = heat_colormap(np.array(0.1 / 0.8)).astype(int)
    assert (np.abs(frame - expected).sum(-1) <= 3).sum() > 64 * 40
    assert (np.abs(frame - heat_colormap(np.array(1.0)).astype(int)).sum(-1) <= 3).sum() > 2 * 28 * 28
    assert ((frame == 255).all(-1)).sum() > 4 * 4 * 30  # white region outlines and labels


def test_the_runner_decodes_frame_by_frame(workspace):
    from reatco.config_files import load_config
    from reatco.runner import EditRunner

    runner = EditRunner(load_config(_config(workspace, **{"tune.enabled": False})), progress=False)
    assert runner.pipeline().vae.use_slicing  # VAE memory independent of the clip's length


def test_model_autocast_runs_the_edit_under_bfloat16_autocast(workspace, monkeypatch):
    import torch

    from reatco.config_files import load_config
    from reatco.pipeline import ReAtCoPipeline
    from reatco.runner import EditRunner

    seen = []
    call = ReAtCoPipeline.__call__
    monkeypatch.setattr(ReAtCoPipeline, "__call__", lambda self, *a, **k: (
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))), call(self, *a, **k))[1])
    for autocast in ("none", "bf16"):
        cfg = load_config(_config(workspace, **{"tune.enabled": False, "model.autocast": autocast}))
        runner = EditRunner(cfg, progress=False)
        result = runner.run(runner.prepare()[0], write=False)
        assert result.report["autocast"] == autocast
    assert seen[0][0] is False and seen[1] == (True, torch.bfloat16)


def test_every_set_flag_counts():
    for script in (edit_script, _load_script("tune")):
        args = script.parse_args(["--config", "c.yaml", "--set", "a=1", "--set", "b=2", "c=3"])
        assert args.set == ["a=1", "b=2", "c=3"]  # a repeated --set adds to the earlier ones


def test_demo_strip_draws_the_run_under_its_source(workspace, capsys):
    strip_script = _load_script("demo_strip")
    config = _config(workspace, output_dir=str(workspace / "strip"))
    png = workspace / "strip.png"
    assert strip_script.main(["--config", str(config), "--out", str(png)]) == 2  # nothing run yet
    assert "run scripts/edit.py" in capsys.readouterr().err and not png.exists()
    assert edit_script.main(["--config", str(config), "--quiet"]) == 0
    assert strip_script.main(["--config", str(config), "--out", str(png)]) == 0
    strip = np.asarray(Image.open(png).convert("RGB"))
    assert strip.shape == (2 * 128, N_FRAMES * 128, 3)  # source row over edited row, 128 px a frame
    edited = np.asarray(Image.open(workspace / "strip" / "swap" / "frames" / "00000.png").convert("RGB"))
    big = edited.repeat(4, 0).repeat(4, 1)  # 32 px → 128 px, nearest
    assert (strip[128 + 66:128 + 126, 66:126] == big[66:126, 66:126]).all()  # inside the horse's box, off its outline
    # the rabbit's box [0, 0, 16, 16] is outlined in white on every edited frame
    assert (strip[128:128 + 64, 63] == 255).all() and (strip[128 + 63, :64] == 255).all()


def test_dry_run_loads_no_unet(workspace, monkeypatch, capsys):
    import reatco.runner

    monkeypatch.setattr(reatco.runner.EditRunner, "pipeline", lambda self: pytest.fail("dry run loaded the model"))
    config = _config(workspace, output_dir=str(workspace / "dry"))
    assert edit_script.main(["--config", str(config), "--dry-run"]) == 0
    assert (workspace / "dry" / "swap" / "regions.png").is_file()
    assert not (workspace / "dry" / "swap" / "edited.mp4").exists()
    printed = capsys.readouterr().out
    assert "idx" in printed and "'horse' -> token indices [5]" in printed


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"video.path": "/nonexistent/video.mp4"}, "video.path"),
        ({"video.n_frames": 50}, "video.n_frames"),
        ({"edits.0.objects.0.word": "zebra"}, "zebra"),
        ({"edits.0.objects.0.box": [0, 0, 40, 16]}, "edits[0].objects[0].box"),
        ({"edits.0.objects.0.box": [0, 0, 4, 4]}, "edits[0].objects[0].box"),
        ({"sampling.steps": 0}, "sampling.steps"),
        ({"irjs.placement": "sideways"}, "irjs.placement"),
    ],
)
def test_bad_input_exits_2_naming_the_field(workspace, capsys, changes, message):
    config = _config(workspace, output_dir=str(workspace / "bad"), **changes)
    assert edit_script.main(["--config", str(config), "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    assert not (workspace / "bad").exists()  # nothing written before the error


def test_unknown_key_and_unknown_edit_exit_2(workspace, capsys):
    config = _config(workspace, output_dir=str(workspace / "bad2"))
    assert edit_script.main(["--config", str(config), "--set", "sampling.sead=3", "--dry-run"]) == 2
    assert "seed" in capsys.readouterr().err  # the suggestion
    assert edit_script.main(["--config", str(config), "--only", "nope", "--dry-run"]) == 2
    assert "swap" in capsys.readouterr().err
