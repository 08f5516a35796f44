"""What `source:` regions need from Wan (the region finder, reatco/regions/finding.py, through the
backbone seam), on the tiny random Wan of tests/tiny_wan.py."""

from __future__ import annotations

import pytest
import torch

from reatco.backbones.wan import WanReAtCoPipeline
from reatco.backbones.wan.flow import step_sigmas

from tiny_wan import TINY_VAE_4X, save_tiny_wan, tiny_clip


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = WanReAtCoPipeline.from_pretrained(save_tiny_wan(tmp_path_factory.mktemp("wansrc") / "tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_source_renoises_at_any_timestep(pipe):
    """The finder noises the source to low levels that are not the run's steps: σ = t / 1000 there
    (flow matching's t = σ·N), the run's own σ at its steps (bit-exact with the inversion's levels)."""
    backbone = pipe.backbone
    source = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(1))
    backbone.set_timesteps(4)
    t = backbone.timesteps[1]
    sigma = float(step_sigmas(pipe.scheduler)[1])
    assert backbone.sigma(t) == step_sigmas(pipe.scheduler)[1]
    assert torch.allclose(backbone.renoise_source(source, t, noise), (1 - sigma) * source + sigma * noise, atol=1e-6)
    assert backbone.sigma(150) == pytest.approx(0.15) and backbone.sigma(0) == 0.0
    assert torch.allclose(backbone.renoise_source(source, 50, noise), 0.95 * source + 0.05 * noise, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        backbone.sigma(1500)


def test_the_runner_reads_the_latent_cell_from_wans_vae_config(tmp_path):
    from types import SimpleNamespace as NS

    from reatco.backbones.wan.runner import WanEditRunner

    for vae, cell in ((None, 8), (TINY_VAE_4X, 4)):
        folder = save_tiny_wan(tmp_path / f"wan-{cell}", vae_config=vae)
        runner = WanEditRunner.__new__(WanEditRunner)  # the config-reading part alone: no clip, no weights
        runner.cfg, runner._geometry = NS(model=NS(pretrained=str(folder))), None
        assert runner.latent_cell_px() == cell


def _config(root, folder, objects, n_frames=5):
    return {
        "model": {"pretrained": str(folder), "attention_cell_px": 16},
        "video": {"path": str(root / "clip"), "prompt": "a red circle on the sea", "n_frames": n_frames,
                  "height": 32, "width": 48},
        "sampling": {"steps": 2, "guidance_scale": 3.0, "seed": 5, "start_in_regions": "noise"},
        "rad": {"max_update_steps": 1, "refinement_thresholds": {}},
        "irjs": {"placement": "after_step"},
        "output_dir": str(root / "out"), "cache_dir": str(root / "cache"),
        "edits": [{"name": "square", "prompt": "a red square on the sea", "objects": objects}],
    }


def test_a_tracked_source_region_edits_on_wan(tmp_path, monkeypatch):
    """A box on frame 2 (sam2) → a stand-in tracker's masks → the region the Wan edit uses (rounded
    out to Wan's 8-px latent cells), written to regions.json; the tracker runs before the model loads."""
    import json

    import numpy as np
    import yaml

    from reatco.backbones import edit_runner
    from reatco.backbones.wan import pipeline as wan_pipeline
    from reatco.config_files import load_config
    from reatco.regions.trackers import Tracked
    from reatco.video import write_frames

    folder = save_tiny_wan(tmp_path / "model")
    write_frames(np.random.default_rng(0).integers(0, 255, size=(5, 32, 48, 3), dtype=np.uint8), tmp_path / "clip")
    (tmp_path / "sam2").mkdir()
    (tmp_path / "sam2" / "model.safetensors").write_bytes(b"stand-in")
    masks = np.zeros((1, 5, 32, 48), bool)
    for f in range(5):
        masks[0, f, 0:16, 5 + 2 * f:21 + 2 * f] = True  # 16 px (one token) a side, moving right 2 px a frame
    source = {"tracker": "sam2", "box": [9, 3, 21, 13], "frame": 2, "region": "boxes", "model": str(tmp_path / "sam2")}
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, folder, [{"word": "square", "source": source}])))
    runner = edit_runner(load_config(path), progress=False)
    calls = []

    class StandIn:
        def __call__(self, name, model, device, progress, field):
            return self

        def track(self, frames, query=None, box=None, point=None, frame=0):
            calls.append((runner._pipe is None, frames.shape, box, frame))
            return Tracked(masks, np.array([0.9]))

    used = {}

    class Spy(wan_pipeline.WanReAtCoPipeline):
        def __call__(self, prompt, *args, objects=(), **kwargs):
            used["regions"] = [o.region for o in objects]
            return super().__call__(prompt, *args, objects=objects, **kwargs)

    monkeypatch.setattr(wan_pipeline, "WanReAtCoPipeline", Spy)
    runner.make_tracker = StandIn()
    prepared = runner.prepare()
    assert prepared[0].regions == [None]  # found when the edit runs
    result = runner.run(prepared[0])
    assert calls == [(True, (5, 32, 48, 3), [9.0, 3.0, 21.0, 13.0], 2)]  # before the model loaded
    region = prepared[0].regions[0]
    expected = [[(5 + 2 * f) // 8 * 8, 0, -(-(21 + 2 * f) // 8) * 8, 16] for f in range(5)]  # whole 8-px latent cells
    assert region.kind == "boxes" and region.boxes.tolist() == expected
    assert len(used["regions"]) == 1 and used["regions"][0] is region  # the found region, not the stand-in
    doc = json.loads((result.out_dir / "regions.json").read_text())
    assert doc["objects"][0]["source"].startswith("source: tracker sam2")
    assert [f["box"] for f in doc["objects"][0]["frames"]] == expected


def test_the_finder_reads_each_pixel_frame_from_its_latent_frame(pipe, monkeypatch):
    """The region finder (reatco/regions/finding.py) through the seam on Wan: the word's maps and the
    last block's features come on latent frames; each pixel frame reads the latent frame that covers it."""
    from reatco.regions import finding

    video = tiny_clip(9, height=32, width=48)
    source = pipe.encode_video(video)
    backbone = pipe.backbone
    seen = []
    real = finding.attention_instances

    def spy(maps, features, frames, *args):
        seen.append((maps.clone(), features.clone()))
        return real(maps, features, frames, *args)

    monkeypatch.setattr(finding, "attention_instances", spy)
    region = finding.find_source_regions(pipe, video, source, "a red circle on the sea", [{"word": "circle"}], 16,
                                         whole_cells=8)[0]
    prompt = backbone.tokenize("a red circle on the sea")
    layers, cell = finding.finding_layers(backbone, None, 16)
    assert cell == 16 and layers == ["blocks.1.attn2.processor"]
    maps, features = finding.source_word_maps(backbone, source, prompt, [backbone.word_token_indices(prompt, "circle")],
                                              (50, 150), layers, (2, 3))
    assert maps.shape == (1, 3, 2, 3) and features.shape[0] == 3  # 3 latent frames
    index = [0, 1, 1, 1, 1, 2, 2, 2, 2]  # pixel frame → the latent frame that covers it
    (got_maps, got_features), = seen
    assert torch.equal(got_maps, maps[0, index]) and torch.equal(got_features, features[index])
    assert region.n_frames == 9 and (region.boxes % 8 == 0).all()  # whole 8-px latent cells


def test_a_source_word_found_by_attention_edits_on_wan(tmp_path):
    """`source: {word: circle}` on a 16-frame clip (padded to 17 for Wan): found on the padded clip,
    cut back to the clip's 16 frames, used by the edit, written to regions.json."""
    import json

    import numpy as np
    import yaml

    from reatco.video import write_frames
    from scripts_loader import load_script

    folder = save_tiny_wan(tmp_path / "model")
    write_frames(np.random.default_rng(0).integers(0, 255, size=(16, 32, 48, 3), dtype=np.uint8), tmp_path / "clip")
    cfg = _config(tmp_path, folder, [{"word": "square", "source": {"word": "circle"}}], n_frames=16)
    cfg["video"]["pad_frames"] = True
    path = tmp_path / "found.yaml"
    path.write_text(yaml.safe_dump(cfg))
    edit = load_script("edit")
    assert edit.main(["--config", str(path), "--overwrite", "--quiet"]) == 0
    out = tmp_path / "out" / "square"
    doc = json.loads((out / "regions.json").read_text())
    assert doc["objects"][0]["source"].startswith("source: attention of source word 'circle'")
    boxes = [f["box"] for f in doc["objects"][0]["frames"]]
    assert len(boxes) == 16 and all(v % 8 == 0 for box in boxes for v in box)
    assert len(list((out / "frames").glob("*.png"))) == 16
    report = json.loads((out / "report.json").read_text())
    assert "find_regions" in report["timings_s"]
    # a word the source prompt lacks is refused before any weights load, naming the field
    cfg["edits"][0]["objects"][0]["source"]["word"] = "dolphin"
    path.write_text(yaml.safe_dump(cfg))
    assert edit.main(["--config", str(path), "--dry-run", "--output_dir", str(tmp_path / "dry")]) == 2
