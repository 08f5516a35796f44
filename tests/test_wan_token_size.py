"""Wan's token size is the model's (VAE factor × patch), not Wan 2.1's 16 px: a tiny Wan-layout
model whose VAE compresses 4× in space (patch 2 → 8-px tokens), as the shapes-world Wan model does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from reatco.backbones.wan import WanReAtCoPipeline, geometry, plan_from_folder
from reatco.backbones.wan import pipeline as wan_pipeline
from reatco.errors import ConfigError
from reatco.video import write_frames

from scripts_loader import load_script
from tiny_wan import TINY_VAE_4X, save_tiny_wan, tiny_clip

PROMPT = "a red circle and a blue square on the sea"
SIZE = dict(height=32, width=48)  # 4 × 6 tokens of 8 px; latents 8 × 12 (4 px a cell)
BOX = [8, 0, 24, 16]  # x 8…24, y 0…16 px: tokens rows 0…1, columns 1…2; latent cells rows 0…3, columns 2…5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan4x") / "tiny-wan-4x", vae_config=TINY_VAE_4X)


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = WanReAtCoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_geometry_is_read_from_the_model_configs(folder, pipe):
    assert geometry.read_geometry(folder) == geometry.WanGeometry(spatial=4, temporal=4, patch=2)
    assert geometry.read_geometry(folder).token_px == 8
    assert pipe.model_geometry.token_px == 8 and pipe.backbone.token_px == 8
    # Wan 2.1's configs: 8× VAE, patch 2 → the documented 16 px
    assert geometry.geometry_from_configs({"scale_factor_spatial": 8, "scale_factor_temporal": 4},
                                          {"patch_size": [1, 2, 2]}) == geometry.WAN21 and geometry.WAN21.token_px == 16
    # Wan 2.2 TI2V-5B's VAE: 16× in space (its own patch 2 inside), the transformer's patch 2 → 32 px
    assert geometry.geometry_from_configs({"scale_factor_spatial": 16, "scale_factor_temporal": 4},
                                          {"patch_size": [1, 2, 2]}).token_px == 32
    # a config that leaves the factors null: they follow from the VAE's stages
    derived = geometry.geometry_from_configs({"scale_factor_spatial": None, "scale_factor_temporal": None,
                                              "dim_mult": [1, 2, 4], "temperal_downsample": [True, False]},
                                             {"patch_size": [1, 1, 1]})
    assert (derived.spatial, derived.temporal, derived.token_px) == (4, 2, 4)
    with pytest.raises(ConfigError) as err:
        geometry.geometry_from_configs({"scale_factor_spatial": 8}, {"patch_size": [2, 2, 2]})
    assert err.value.field == "model.pretrained" and "patch_size" in str(err.value)


def test_sizes_and_boxes_are_checked_on_the_models_token_before_weights_load(folder, tmp_path):
    bare = tmp_path / "no-weights"
    shutil.copytree(folder, bare)
    for sub in ("transformer", "vae", "text_encoder"):
        for f in (bare / sub).iterdir():
            if f.suffix in (".safetensors", ".bin"):
                f.unlink()
    # 40 px is a multiple of the 8-px token (refused on Wan 2.1's 16 px), 36 is not
    plan = plan_from_folder(bare, PROMPT, [{"word": "circle", "box": [0, 0, 8, 8]}], n_frames=5, height=40, width=48)
    assert plan.geometry.token_px == 8 and plan.objects[0].token_indices == (2,)
    with pytest.raises(ConfigError) as err:
        plan_from_folder(bare, PROMPT, [], n_frames=5, height=36, width=48)
    assert err.value.field == "video.height" and "8 px" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a box smaller than one 8-px token
        plan_from_folder(bare, PROMPT, [{"word": "circle", "box": [0, 0, 4, 4]}], n_frames=5, **SIZE)
    assert err.value.field.startswith("objects[0].box")


def test_an_edit_runs_and_its_regions_land_on_the_models_tokens(pipe, monkeypatch):
    seen = {}

    class Spy(wan_pipeline.RADGuidance):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["masks"] = self.masks.clone()

    monkeypatch.setattr(wan_pipeline, "RADGuidance", Spy)
    video = tiny_clip(5, **SIZE)
    source = pipe.encode_video(video)
    assert source.shape == (1, 16, 2, 8, 12)  # 4× in space and time
    out = pipe(PROMPT, video=video, objects=[{"word": "circle", "box": BOX}], num_inference_steps=3, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0), rad={"max_update_steps": 2, "step_size": 50.0},
               irjs={"placement": "after_step"}, return_attention=True, output_type="latent")
    expected = torch.zeros(1, 2, 4, 6)  # RAD's mask on the 4 × 6 token grid of both latent frames
    expected[..., 0:2, 1:3] = 1
    assert torch.equal(seen["masks"].cpu().float(), expected)
    assert out.attention_maps.shape == (1, 2, 4, 6) and [r["step"] for r in out.rad_losses] == [0, 1]
    inside = torch.zeros(1, 1, 2, 8, 12, dtype=torch.bool)  # IRJS's cells: 4 px each
    inside[..., 0:4, 2:6] = True
    assert torch.equal(out.frames.masked_select(~inside), source.masked_select(~inside))  # the clean source outside
    assert not torch.equal(out.frames.masked_select(inside), source.masked_select(inside))
    frames = pipe(PROMPT, video=video, objects=[{"word": "circle", "box": BOX}], num_inference_steps=2, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0), rad={"max_update_steps": 1}, output_type="pt").frames[0]
    assert frames.shape == (5, 3, 32, 48) and torch.isfinite(frames).all()
    with pytest.raises(ConfigError) as err:  # the model's token, not Wan 2.1's
        pipe.backbone.attention_layers(16)
    assert err.value.field == "model.attention_cell_px" and "8 px" in str(err.value)


def test_the_runner_takes_the_models_token(folder, tmp_path, capsys):
    edit_script = load_script("edit")
    write_frames(np.random.default_rng(0).integers(0, 255, size=(5, 32, 48, 3), dtype=np.uint8), tmp_path / "clip")
    cfg = {
        "model": {"pretrained": str(folder), "attention_cell_px": 8},
        "video": {"path": str(tmp_path / "clip"), "prompt": "a red circle on the sea", "n_frames": 5, **SIZE},
        "sampling": {"steps": 2, "guidance_scale": 3.0, "seed": 5, "start_in_regions": "noise"},
        "rad": {"max_update_steps": 1, "refinement_thresholds": {}},
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "edits": [{"name": "square", "prompt": "a red square on the sea",
                   "objects": [{"word": "square", "box": BOX}]}],
    }
    path = tmp_path / "wan4x.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert edit_script.main(["--config", str(path), "--overwrite", "--quiet"]) == 0, capsys.readouterr().err
    out = tmp_path / "out" / "square"
    assert len(list((out / "frames").glob("*.png"))) == 5
    assert json.loads((out / "report.json").read_text())["backbone"] == "wan"
    cfg["model"]["attention_cell_px"] = 16  # Wan 2.1's token is not this model's
    path.write_text(yaml.safe_dump(cfg))
    assert edit_script.main(["--config", str(path), "--dry-run", "--output_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "model.attention_cell_px" in err and "8 px" in err
