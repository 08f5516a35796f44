"""What `source:` regions need from Wan (the region finder, reatco/regions/finding.py, through the
backbone seam), on the tiny random Wan of tests/tiny_wan.py."""

from __future__ import annotations

import pytest
import torch

from reatco.backbones.wan import WanReAtCoPipeline
from reatco.backbones.wan.flow import step_sigmas

from tiny_wan import TINY_VAE_4X, save_tiny_wan


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
