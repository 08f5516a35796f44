"""Pieces of scripts/train_shapes_model.py that the shipped model's decoder fine-tune relies on."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_shapes_model", ROOT / "scripts" / "train_shapes_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_joins_are_latent_grid_rectangles_with_their_pixel_twins(train):
    lat, pix = train.rectangle_masks(6, 16, torch.Generator().manual_seed(0))
    assert lat.shape == (6, 1, 16, 16) and pix.shape == (6, 1, 64, 64)
    assert torch.equal(pix, lat.repeat_interleave(4, 2).repeat_interleave(4, 3))  # whole 4×4-pixel cells
    for m in lat[:, 0]:
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        assert 2 <= len(rows) <= 10 and 2 <= len(cols) <= 10
        assert m.sum() == len(rows) * len(cols) and (rows.diff() == 1).all() and (cols.diff() == 1).all()  # one rectangle
    a, b = torch.zeros(6, 3, 64, 64), torch.ones(6, 3, 64, 64)
    assert torch.equal(train.join(a, b, pix), (1 - pix).expand(6, 3, 64, 64))


def test_the_seam_ring_is_the_outside_band_around_the_join(train):
    m = torch.zeros(1, 1, 12, 12)
    m[..., 4:8, 4:8] = 1
    ring = train.outer_ring(m, 2)
    expected = torch.zeros(1, 1, 12, 12)
    expected[..., 2:10, 2:10] = 1
    expected[..., 4:8, 4:8] = 0
    assert torch.equal(ring, expected)


def test_export_vae_replaces_only_the_decoder_and_refuses_a_new_encoder(train, tmp_path):
    from diffusers import AutoencoderKL

    model = tmp_path / "model"
    shutil.copytree(ROOT / "data" / "shapes-model", model)
    shipped = AutoencoderKL.from_pretrained(model / "vae")
    state = {k: v.clone() for k, v in shipped.state_dict().items()}
    state["decoder.conv_out.bias"] += 0.5  # a fine-tuned decoder
    work = tmp_path / "work"
    work.mkdir()
    torch.save(dict(model=state, step=123, history=[{"step": 123}], wall_s=4.0), work / "vae.pt")
    args = type("Args", (), dict(work=str(work), out=str(model)))
    train.export_vae(args)
    exported = AutoencoderKL.from_pretrained(model / "vae")
    assert exported.config.scaling_factor == shipped.config.scaling_factor
    assert torch.equal(exported.state_dict()["decoder.conv_out.bias"], state["decoder.conv_out.bias"])
    assert json.loads((model / "training.json").read_text())["vae_steps"] == 123
    state["encoder.conv_in.bias"] += 0.5  # the UNet's latent space would change: refused
    torch.save(dict(model=state, step=124, history=[], wall_s=5.0), work / "vae.pt")
    with pytest.raises(SystemExit, match="encoder differs"):
        train.export_vae(args)
    assert json.loads((model / "training.json").read_text())["vae_steps"] == 123  # nothing written
