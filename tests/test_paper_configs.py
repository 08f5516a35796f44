"""The paper's demo configs validate and draw their regions on the real clips, with no weights.

The clips are not ours to ship: tests/paper_clips.py says where they are looked for."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reatco.config import load_config

from paper_clips import CLIPS

ROOT = Path(__file__).resolve().parent.parent
PAPER = {"dolphins": "dolphins-swimming.mp4", "hares": "hares-grazing.mp4", "birds": "birds-standing.mp4"}

spec = importlib.util.spec_from_file_location("edit_script", ROOT / "scripts" / "edit.py")
edit_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(edit_script)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_schema(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", check_paths=False)
    assert (cfg.video.height, cfg.video.width, cfg.video.n_frames, cfg.sampling.seed) == (448, 768, 16, 33)
    assert cfg.sampling.guidance_scale == (5.5 if name == "hares" else 12.5)
    assert cfg.tune.steps == 200 and cfg.tune.learning_rate == 3e-5 and cfg.sampling.steps == 50


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_dry_run_draws_regions_on_the_clip(name, tmp_path, capsys):
    clip = CLIPS / PAPER[name]
    if not clip.exists():
        pytest.skip(f"{clip} is not here (the paper clips are not shipped)")
    out = tmp_path / name
    code = edit_script.main(["--config", str(ROOT / "configs" / f"{name}.yaml"), "--set", f"video.path={clip}",
                             "--output_dir", str(out), "--dry-run"])
    assert code == 0, capsys.readouterr().err
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", [f"video.path={clip}"])
    from reatco.regions import _PALETTE

    scale = 384 / 768  # regions.png: every frame 384 px wide, frame 0 at (4, 20)
    for edit in cfg.edits:
        drawn = np.asarray(Image.open(out / edit.name / "regions.png").convert("RGB"))
        assert drawn.shape[1] == 8 * (384 + 4) + 4 and drawn.shape[0] > 2 * 224  # 16 frames: 2 rows of 8
        for j, obj in enumerate(edit.objects):
            x1, y1, x2, y2 = (round(v * scale) for v in obj.box)
            # frame 0's outline in the word's colour along the box's left edge
            edge = drawn[20 + y1 + 2:20 + y2 - 2, 4 + x1]
            assert (edge == _PALETTE[j % len(_PALETTE)]).all(-1).mean() > 0.9, (edit.name, obj.word)
