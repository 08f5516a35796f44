"""Configs, scripts/edit.py and the runner on a Wan folder (the tiny one of tests/tiny_wan.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from reatco.backbones import backbone_of, edit_runner
from reatco.config_files import load_config
from reatco.errors import ConfigError
from reatco.video import write_frames

from scripts_loader import load_script
from tiny_wan import save_tiny_wan

ROOT = Path(__file__).resolve().parent.parent
edit_script = load_script("edit")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-edit")
    save_tiny_wan(root / "model")
    rng = np.random.default_rng(0)
    write_frames(rng.integers(0, 255, size=(8, 32, 48, 3), dtype=np.uint8), root / "clip")
    return root


def _config(root, **changes):
    cfg = {
        "model": {"pretrained": str(root / "model"), "attention_cell_px": 16},
        "video": {"path": str(root / "clip"), "prompt": "a red circle on the sea", "height": 32, "width": 48,
                  "n_frames": 5},
        "sampling": {"steps": 3, "guidance_scale": 3.0, "seed": 5, "start_in_regions": "noise"},
        "rad": {"max_update_steps": 2, "refinement_thresholds": {0: 0.5}, "max_refinement_iters": 1},
        "output_dir": str(root / "out"),
        "cache_dir": str(root / "cache"),
        "edits": [{"name": "square", "prompt": "a red square on the sea",
                   "objects": [{"word": "square", "boxes": {0: [0, 0, 32, 32], 4: [16, 0, 48, 32]}}]}],
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    return cfg


def _write(root, cfg, name="wan.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_backbone_is_read_from_model_index_unless_given(workspace):
    from types import SimpleNamespace as NS

    assert backbone_of(NS(pretrained=str(workspace / "model"), backbone="auto")) == "wan"
    assert backbone_of(NS(pretrained=str(ROOT / "data" / "shapes-model"), backbone="auto")) == "unet"
    assert backbone_of(NS(pretrained=str(workspace / "model"), backbone="unet")) == "unet"
    assert backbone_of(NS(pretrained="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", backbone="auto")) == "wan"
    assert backbone_of(NS(pretrained="Wan-AI/Wan2.2-T2V-A14B-Diffusers", backbone="auto")) == "wan"
    assert backbone_of(NS(pretrained="CompVis/stable-diffusion-v1-4", backbone="auto")) == "unet"
    cfg = load_config(_write(workspace, _config(workspace)))
    assert type(edit_runner(cfg)).__name__ == "WanEditRunner"


def test_new_config_fields_are_checked():
    from reatco.config_files import config_from_dict

    def error(d):
        with pytest.raises(ConfigError) as err:
            config_from_dict({"video": {"path": "x.mp4"}, **d}, check_paths=False)
        return err.value.field

    assert error({"model": {"backbone": "dit"}}) == "model.backbone"
    assert error({"rad": {"blocks": []}}) == "rad.blocks"
    assert error({"rad": {"blocks": [-1]}}) == "rad.blocks"
    assert error({"inversion": {"fixed_point_iters": -1}}) == "inversion.fixed_point_iters"


def test_dolphins_wan_config_dry_runs(workspace, tmp_path, capsys):
    """configs/dolphins-wan.yaml as it is, with the tiny Wan folder for the model (the hub's umT5
    tokenizer is out of reach here) and a 16-frame 448 × 768 clip for the paper's."""
    write_frames(np.zeros((16, 448, 768, 3), np.uint8), tmp_path / "dolphins")
    cfg = load_config(ROOT / "configs" / "dolphins-wan.yaml", check_paths=False)
    assert (cfg.model.pretrained, cfg.model.attention_cell_px, cfg.video.n_frames, cfg.video.pad_frames) == (
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 16, 16, True)
    assert len(cfg.edits) == 5 and cfg.tune.enabled is False
    out = tmp_path / "out"
    code = edit_script.main(["--config", str(ROOT / "configs" / "dolphins-wan.yaml"), "--dry-run", "--output_dir", str(out),
                             "--set", f"model.pretrained={workspace / 'model'}", "--set", f"video.path={tmp_path / 'dolphins'}"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sorted(p.name for p in out.iterdir()) == sorted(e.name for e in cfg.edits)
    assert all((out / e.name / "regions.png").is_file() for e in cfg.edits)
    assert "'jellyfish' -> token indices [1]" in printed and "</s>" in printed
    # without padding a 16-frame clip is refused, naming the field, before any weights load
    code = edit_script.main(["--config", str(ROOT / "configs" / "dolphins-wan.yaml"), "--dry-run", "--output_dir", str(out),
                             "--set", f"model.pretrained={workspace / 'model'}", "--set", f"video.path={tmp_path / 'dolphins'}",
                             "--set", "video.pad_frames=false"])
    assert code == 2 and "video.n_frames" in capsys.readouterr().err


@pytest.mark.parametrize("changes, field", [
    ({"video.n_frames": 4}, "video.n_frames"),
    ({"model.attention_cell_px": 8}, "model.attention_cell_px"),
    ({"rad.blocks": [7]}, "rad.blocks"),
    ({"tune": {"enabled": True}}, "tune.enabled"),
    ({"window": {"size": 5, "stride": 6}}, "window.stride"),
    ({"edits": [{"name": "x", "prompt": "a red square on the sea", "objects": [{"word": "dog", "box": [0, 0, 32, 32]}]}]},
     "edits[0].objects[0].word"),
])
def test_bad_wan_input_exits_2_naming_the_field(workspace, capsys, changes, field):
    path = _write(workspace, _config(workspace, **changes), "bad.yaml")
    code = edit_script.main(["--config", str(path), "--dry-run", "--output_dir", str(workspace / "bad-out")])
    assert code == 2
    assert field in capsys.readouterr().err


def test_edit_script_runs_a_whole_wan_edit_and_reuses_the_inversion(workspace, capsys, monkeypatch):
    cfg = _config(workspace, **{"video.n_frames": 8, "video.pad_frames": True})
    path = _write(workspace, cfg)
    code = edit_script.main(["--config", str(path), "--overwrite", "--quiet"])
    assert code == 0, capsys.readouterr().err
    out = workspace / "out" / "square"
    report = json.loads((out / "report.json").read_text())
    assert report["backbone"] == "wan" and report["frames"] == {"clip": 8, "run": 9}
    assert report["rad_blocks"] == [1] and [r["step"] for r in report["rad_losses"]] == [0, 1]
    assert len(list((out / "frames").glob("*.png"))) == 8  # the padded frame is dropped
    for name in ("edited.mp4", "attention.mp4", "regions.png", "regions.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert len(list((workspace / "cache" / "inversion").glob("*.pt"))) == 1
    # a second run of the same source takes the cached inversion
    from reatco.backbones.wan.pipeline import WanReAtCoPipeline

    monkeypatch.setattr(WanReAtCoPipeline, "invert", lambda *a, **k: pytest.fail("the inversion is cached"))
    first = (out / "frames" / "00000.png").read_bytes()
    assert edit_script.main(["--config", str(path), "--overwrite", "--quiet"]) == 0
    assert (out / "frames" / "00000.png").read_bytes() == first  # one seed, one edit


def test_eval_loveu_edits_missing_predictions_on_a_wan_folder(workspace, tmp_path):
    """scripts/eval_loveu.py runs the same on a Wan base config: the predictions are edited by the
    Wan runner (LOVEU's 3-frame clip padded to 5) and scored."""
    from PIL import Image

    from reatco.metrics import clear_cache
    from tiny_models import save_tiny_clip

    eval_loveu = load_script("eval_loveu")
    data = tmp_path / "data"
    frames = data / "DAVIS_480p" / "480p_frames" / "gold-fish"
    frames.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(3):
        Image.fromarray(rng.randint(0, 256, (24, 24, 3), dtype=np.uint8)).save(frames / f"{i:05d}.jpg")
    (data / "LOVEU-TGVE-2023_Dataset.csv").write_text(
        "Video name,Our GT caption,Style Change Caption,Object Change Caption,Background Change Caption,"
        "Multiple Changes Caption\nDAVIS Videos:,,,,,\ngold-fish,a red fish in the sea.,a blue fish in the sea.,"
        "a red shark in the sea.,a red fish on the sea.,a blue shark on the sea.\n")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"pretrained": str(workspace / "model"), "attention_cell_px": 16},
        "video": {"pad_frames": True},
        "sampling": {"steps": 2, "guidance_scale": 2.0},
        "rad": {"refinement_thresholds": {}},
    }))
    clear_cache()
    clip = save_tiny_clip(tmp_path / "clip")
    pred, out = tmp_path / "pred", tmp_path / "out"
    args = ["--data_root", str(data), "--pred_root", str(pred), "--out", str(out), "--metrics", "clip_text",
            "--clip_model", str(clip), "--base_config", str(base), "--height", "32", "--width", "32", "--limit", "1"]
    try:
        assert eval_loveu.main(args) == 0
    finally:
        clear_cache()
    made = sorted(pred.rglob("00000.jpg"))
    assert len(made) == 1 and len(list(made[0].parent.glob("*.jpg"))) == 3
    assert json.loads((out / "summary.json").read_text())["n_edits"] == 1
