"""The paper's demo configs validate and draw their regions on the real clips, with no weights.

The clips are not ours to ship: they are read from ../shared/data/paper-clips/ when present."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reatco.config import load_config
from reatco.video import read_video, to_uint8

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT.parent / "shared" / "data" / "paper-clips"
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
    source = to_uint8((read_video(clip, 448, 768, n_frames=1) + 1) / 2)[0]
    for edit in cfg.edits:
        drawn = np.asarray(Image.open(out / edit.name / "regions.png").convert("RGB"))
        assert drawn.shape == source.shape
        for obj in edit.objects:
            x1, y1, x2, y2 = map(int, obj.box)
            # the outline is drawn on the box edge; the frame is untouched well inside the box
            assert (drawn[y1:y2, x1] != source[y1:y2, x1]).any(), (edit.name, obj.word)
            assert (drawn[(y1 + y2) // 2, (x1 + x2) // 2] == source[(y1 + y2) // 2, (x1 + x2) // 2]).all()
