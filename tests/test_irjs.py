"""IRJS: the source at the right noise level, region masks on the latent grid, feathering, blending."""

import pytest
import torch
from diffusers import DDIMScheduler

from reatco.config import section_settings
from reatco.errors import ConfigError
from reatco.irjs.blend import blend, feather_mask, latent_region_mask, noise_source
from reatco.regions.region import object_masks
from reatco.regions.parsing import parse_region
from reatco.regions.settings import object_settings


def sd_scheduler():
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)


def test_noise_source_is_add_noise():
    s = sd_scheduler()
    s.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 3, 8, 8, generator=g)
    eps = torch.randn(1, 4, 3, 8, 8, generator=g)
    for t in (s.timesteps[0], s.timesteps[25], s.timesteps[-1], 0):
        ours = noise_source(s, x0, t, eps)
        ref = s.add_noise(x0, eps, torch.tensor([int(t)]))
        assert torch.allclose(ours, ref, atol=1e-6)
        a = s.alphas_cumprod[int(t)]
        assert torch.allclose(ours, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    # t = 0 is still (slightly) noisy: ᾱ_0 < 1.
    assert not torch.equal(noise_source(s, x0, 0, eps), x0)
    assert noise_source(s, x0.half(), 10, eps).dtype == torch.float16
    with pytest.raises(ValueError):
        noise_source(s, x0, 1000, eps)


def test_latent_region_mask_is_the_union_on_the_latent_grid():
    H, W = 448, 768
    regions = [parse_region(object_settings({"box": [0, 0, 64, 64]}), 2, H, W, 32, "o[0]"), parse_region(object_settings({"box": [128, 64, 256, 128]}), 2, H, W, 32, "o[1]")]
    at_latent = latent_region_mask(object_masks(regions, 2, 56, 96), 56, 96)
    assert at_latent.shape == (1, 1, 2, 56, 96)
    assert at_latent[0, 0, 0, :8, :8].eq(1).all() and at_latent[0, 0, 0, 8:16, 16:32].eq(1).all()
    assert at_latent.sum() == 2 * (64 + 8 * 16)
    # Cell-aligned boxes: the attention grid upscaled to the latent grid gives the same mask.
    from_attention = latent_region_mask(object_masks(regions, 2, 14, 24), 56, 96)
    assert torch.equal(from_attention, at_latent)
    union = object_masks(regions, 2, 56, 96).amax(0)
    assert torch.equal(latent_region_mask(union, 56, 96), at_latent)


def test_feather_bounds():
    m = torch.zeros(1, 1, 2, 9, 9)
    m[..., 3:6, 3:6] = 1
    f = feather_mask(m, 2)
    assert f.shape == m.shape
    assert f[m == 1].eq(1).all()  # exactly 1 inside
    assert f[..., 2, 4].eq(2 / 3).all() and f[..., 1, 1].eq(1 / 3).all()  # chessboard rings
    band = torch.zeros_like(m)
    band[..., 1:8, 1:8] = 1
    assert f[band == 0].eq(0).all()  # exactly 0 beyond the band
    assert ((f >= 0) & (f <= 1)).all()
    assert feather_mask(m, 0) is m
    with pytest.raises(ValueError, match="feather") as e:  # the math: a plain ValueError
        feather_mask(m, -1)
    assert not isinstance(e.value, ConfigError)
    with pytest.raises(ConfigError) as e:  # the settings layer names the field
        section_settings("irjs", {"feather": -1})
    assert e.value.field == "irjs.feather"


def test_blend_is_exact_outside_and_inside():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 3, 6, 6, generator=g)
    source = torch.randn(1, 4, 3, 6, 6, generator=g)
    mask = torch.zeros(3, 6, 6)
    mask[:, 1:4, 2:5] = 1
    mask[2] = 0  # a frame with nothing editable
    for m in (mask, mask[None, None], mask[None, None].expand(2, 4, 3, 6, 6)):
        out = blend(latents, source, m)
        inside = m.expand_as(latents).bool() if m.dim() == 5 else mask[None, None].expand_as(latents).bool()
        assert torch.equal(out[inside], latents[inside])
        assert torch.equal(out[~inside], source.expand_as(latents)[~inside])
    soft = torch.full((3, 6, 6), 0.25)
    assert torch.allclose(blend(latents, source, soft), 0.25 * latents + 0.75 * source)
    with pytest.raises(ValueError):
        blend(latents, source, torch.ones(2, 6, 6))


def _invariant(**settings):
    from reatco.config import IRJSConfig
    from reatco.backbones.tav.backbone import TuneAVideoBackbone
    from reatco.irjs.blend import InvariantRegion

    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    cells = torch.zeros(1, 1, 4, 8, 8)
    cells[..., :4, :4] = 1
    g = torch.Generator().manual_seed(0)
    source = torch.randn(1, 4, 4, 8, 8, generator=g)
    trajectory = torch.randn(5, 1, 4, 4, 8, 8, generator=g)
    backbone = TuneAVideoBackbone(None, scheduler=scheduler)
    return InvariantRegion(backbone, IRJSConfig(**settings), cells, source, trajectory, torch.Generator().manual_seed(3))


def test_invariant_region_keeps_the_source_outside_and_the_latents_inside():
    region = _invariant(source="inversion")
    x = torch.randn(1, 4, 4, 8, 8)
    out = region.before_step(x, 1, region.backbone.timesteps[1], [0, 1, 2, 3])
    outside = region.mask == 0
    expected_source = region.trajectory[4 - 1]  # step 1 of 4 ↔ inversion level 3
    assert torch.equal(out.masked_select(outside.expand_as(out)), expected_source.masked_select(outside.expand_as(out)))
    assert torch.equal(out.masked_select(~outside.expand_as(out)), x.masked_select(~outside.expand_as(out)))
    assert torch.equal(region.after_step(x, 1), x)  # placement before_step: nothing after the step
    after = _invariant(source="inversion", placement="after_step")
    assert torch.equal(after.before_step(x, 0, 0, [0, 1, 2, 3]), x)
    last = after.after_step(x, 3)  # after the last step: the clean source V_0
    assert torch.equal(last[..., 4:, 4:], after.source_latents[..., 4:, 4:])


def test_invariant_region_draws_one_noise_per_clip_or_per_window():
    """The whole-clip draw is made once per step, shared by its windows; per_window draws each
    window's own noise for its frames (the official loop)."""
    windows = [[0, 1], [2, 3]]
    x = torch.zeros(1, 4, 4, 8, 8)
    clip = _invariant(source="noise", noise="per_step")
    t = clip.backbone.timesteps[0]
    halves = [clip.before_step(x[:, :, w], 0, t, w, len(windows)) for w in windows]
    reference = _invariant(source="noise", noise="per_step")
    whole = reference.before_step(x, 0, t, [0, 1, 2, 3])
    torch.testing.assert_close(torch.cat(halves, dim=2), whole, rtol=0, atol=0)
    per_window = _invariant(source="noise", noise="per_window")
    g = torch.Generator().manual_seed(3)
    for w in windows:
        noise = torch.randn(1, 4, len(w), 8, 8, generator=g)
        expected = noise_source(per_window.backbone.scheduler, per_window.source_latents[:, :, w], t, noise)
        got = per_window.before_step(x[:, :, w], 0, t, w, len(windows))
        assert torch.equal(got[..., 4:, 4:], expected[..., 4:, 4:])
