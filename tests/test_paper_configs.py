"""The paper's demo configs validate and draw their regions on the real clips, with no weights.

The clips are not ours to ship: tests/paper_clips.py says where they are looked for."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reatco.config import edit_config
from reatco.config_files import load_config

from paper_clips import CLIPS

ROOT = Path(__file__).resolve().parent.parent
PAPER = {"dolphins": "dolphins-swimming.mp4", "hares": "hares-grazing.mp4", "birds": "birds-standing.mp4"}

spec = importlib.util.spec_from_file_location("edit_script", ROOT / "reatco" / "commands" / "edit.py")
edit_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(edit_script)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_schema(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", check_paths=False)
    assert (cfg.video.height, cfg.video.width, cfg.video.n_frames, cfg.sampling.seed) == (448, 768, 16, 33)
    assert cfg.sampling.guidance_scale == (5.5 if name == "hares" else 12.5)
    assert cfg.tune.steps == 200 and cfg.tune.learning_rate == 3e-5 and cfg.sampling.steps == 50


# The official scripts' edits (mdswyz/ReAtCo @9ecd5c0, reatco_editing_*.py): prompt, boxes in
# token order, maintain_back (IRJS). The hares partial script edits only the left hare.
CAT_SWAN = [[67, 240, 271, 353], [410, 150, 590, 343]]
FISH = [[93, 287, 269, 417], [262, 257, 477, 378]]
OFFICIAL = {
    "dolphins": [(p, FISH, True) for p in (
        "A jellyfish and a goldfish are swimming in the blue ocean.", "A goldfish and a shark are swimming in the blue ocean.",
        "A jellyfish and a octopus are swimming in the blue ocean.", "A jellyfish and a shark are swimming in the blue ocean.",
        "A turtle and a goldfish are swimming in the blue ocean.")],
    "hares": [("A cat and a swan are grazing in the grass.", CAT_SWAN, True),
              ("A swan and a hare are grazing in the grass.", CAT_SWAN[:1], True),
              ("A chicken and a hare are grazing in the grass.", CAT_SWAN[:1], True),
              ("A cat and a swan are grazing in the grass, with the aurora borealis in the background.", CAT_SWAN, False),
              ("A cat and a swan are grazing in the yellow meadow.", CAT_SWAN, False)],
    "birds": [("A cat, a rabbit, and a chicken are standing on a wall.",
               [[29, 249, 173, 391], [321, 257, 437, 382], [438, 260, 590, 386]], True)],
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_run_the_official_edits_with_the_official_numerics(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", check_paths=False)
    ran = [(e.prompt, [list(map(int, o.box)) for o in e.objects], edit_config(cfg, e).irjs.enabled) for e in cfg.edits]
    assert sorted(ran) == sorted(OFFICIAL[name])
    for edit in cfg.edits:
        run = edit_config(cfg, edit)
        rad, irjs = run.rad, run.irjs
        assert (rad.step_size, rad.step_size_range, rad.max_update_steps) == (20.0, [1.0, 0.5], 25)
        assert rad.refinement_thresholds == {0: 0.05, 10: 0.5, 20: 0.8} and rad.max_refinement_iters == 20
        assert (rad.refinement, rad.top_k_rounding, rad.top_k_ratio, rad.box_grid) == ("official", "truncate", 0.2, "round")
        assert (rad.token_normalization, rad.temperature, rad.normalize_eot, rad.smoothing) == ("softmax", 100.0, False, True)
        # whole clips, with α calibrated to what the official 4-frame windows give each frame
        assert run.window.size is None and rad.calibration_frames == 4
        assert (irjs.placement, irjs.source, irjs.noise, irjs.feather, irjs.decode_statistics, irjs.decode_outside) == (
            "before_step", "noise", "per_window", 0, "edit", "edit")
        assert (run.sampling.start_in_regions, run.inversion.prompt, run.inversion.guidance_scale) == ("inversion", "", 1.0)


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
    from reatco.regions.region import PALETTE

    scale = 384 / 768  # regions.png: every frame 384 px wide, frame 0 at (4, 20)
    for edit in cfg.edits:
        drawn = np.asarray(Image.open(out / edit.name / "regions.png").convert("RGB"))
        assert drawn.shape[1] == 8 * (384 + 4) + 4 and drawn.shape[0] > 2 * 224  # 16 frames: 2 rows of 8
        for j, obj in enumerate(edit.objects):
            x1, y1, x2, y2 = (round(v * scale) for v in obj.box)
            # frame 0's outline in the word's colour along the box's left edge
            edge = drawn[20 + y1 + 2:20 + y2 - 2, 4 + x1]
            assert (edge == PALETTE[j % len(PALETTE)]).all(-1).mean() > 0.9, (edit.name, obj.word)
