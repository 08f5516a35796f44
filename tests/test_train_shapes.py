"""Pieces of reatco.toy.training (scripts/train_shapes_model.py) that the shipped model's decoder
fine-tune relies on."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from reatco.toy import training as train
from scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_joins_are_latent_grid_rectangles_with_their_pixel_twins():
    lat, pix = train.rectangle_masks(6, 16, torch.Generator().manual_seed(0))
    assert lat.shape == (6, 1, 16, 16) and pix.shape == (6, 1, 64, 64)
    assert torch.equal(pix, lat.repeat_interleave(4, 2).repeat_interleave(4, 3))  # whole 4×4-pixel cells
    for m in lat[:, 0]:
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        assert 2 <= len(rows) <= 10 and 2 <= len(cols) <= 10
        assert m.sum() == len(rows) * len(cols) and (rows.diff() == 1).all() and (cols.diff() == 1).all()  # one rectangle
    a, b = torch.zeros(6, 3, 64, 64), torch.ones(6, 3, 64, 64)
    assert torch.equal(train.join(a, b, pix), (1 - pix).expand(6, 3, 64, 64))


def test_the_seam_ring_is_the_outside_band_around_the_join():
    m = torch.zeros(1, 1, 12, 12)
    m[..., 4:8, 4:8] = 1
    ring = train.outer_ring(m, 2)
    expected = torch.zeros(1, 1, 12, 12)
    expected[..., 2:10, 2:10] = 1
    expected[..., 4:8, 4:8] = 0
    assert torch.equal(ring, expected)


def test_export_vae_replaces_only_the_decoder_and_refuses_a_new_encoder(tmp_path, capsys):
    from diffusers import AutoencoderKL

    model = tmp_path / "model"
    shutil.copytree(ROOT / "data" / "shapes-model", model)
    shipped = AutoencoderKL.from_pretrained(model / "vae")
    state = {k: v.clone() for k, v in shipped.state_dict().items()}
    state["decoder.conv_out.bias"] += 0.5  # a fine-tuned decoder
    work = tmp_path / "work"
    work.mkdir()
    torch.save(dict(model=state, step=123, history=[{"step": 123}], wall_s=4.0), work / "vae.pt")
    train.export_vae(train.TrainSettings(work=str(work), out=str(model)))
    exported = AutoencoderKL.from_pretrained(model / "vae")
    assert exported.config.scaling_factor == shipped.config.scaling_factor
    assert torch.equal(exported.state_dict()["decoder.conv_out.bias"], state["decoder.conv_out.bias"])
    assert json.loads((model / "training.json").read_text())["vae_steps"] == 123
    state["encoder.conv_in.bias"] += 0.5  # the UNet's latent space would change: refused
    torch.save(dict(model=state, step=124, history=[], wall_s=5.0), work / "vae.pt")
    # the command line: the error names --out, exit code 2, nothing written
    script = load_script("train_shapes_model")
    threads = torch.get_num_threads()
    try:
        code = script.main(["--stage", "export_vae", "--work", str(work), "--out", str(model), "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    assert code == 2 and "out: the encoder differs" in capsys.readouterr().err
    assert json.loads((model / "training.json").read_text())["vae_steps"] == 123
    assert (work / "commands.log").read_text().count("--stage export_vae") == 1  # the chunk is noted


def test_the_training_psnr_is_the_per_image_psnr_of_the_evaluation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    b = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    from reatco.metrics.fidelity import masked_psnr

    for k, value in enumerate(train.psnr(a, b)):
        frames = [((x[k:k + 1].permute(0, 2, 3, 1).double() + 1) / 2).numpy() for x in (a, b)]
        assert float(value) == pytest.approx(masked_psnr(*frames, data_range=1.0), abs=1e-4)
