"""Anchoring (`rad.anchor_step_ratios`) on Wan: an object's region latents copied, at an anchor
step, from the latent frame where its word is attended most to every other latent frame (the UNet's
reatco/rad/anchoring.py on latent frames), on the tiny random Wan of tests/tiny_wan.py."""

from __future__ import annotations

import pytest
import torch

from reatco.backbones.wan import WanReAtCoPipeline

from tiny_wan import save_tiny_wan, tiny_clip

PROMPT = "a red circle and a blue square on the sea"
SIZE = dict(height=32, width=48)  # latents 4 × 6, tokens 2 × 3
CIRCLE = {"word": "circle", "box": [0, 0, 32, 32]}  # latent cells rows 0…3, columns 0…3


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = WanReAtCoPipeline.from_pretrained(save_tiny_wan(tmp_path_factory.mktemp("wananchor") / "tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)



def _latents_after(pipe, step, **kwargs):
    seen = {}

    def keep(p, i, t, values):
        if i == step:
            seen["latents"] = values["latents"].clone()
        return values

    pipe(PROMPT, video=tiny_clip(17, **SIZE), objects=[CIRCLE], num_inference_steps=4, guidance_scale=3.0,
         generator=_gen(), start_in_regions="noise", irjs={"placement": "after_step"}, callback_on_step_end=keep,
         output_type="latent", **kwargs)
    return seen["latents"]


# RAD passes on steps 0-1 only (the anchor step's presence is observed in its model call), or on every step;
# in one pass or in windows of 3 latent frames (the presence averaged over the windows that hold a frame)
@pytest.mark.parametrize("max_update_steps, window", [(2, None), (4, None), (2, {"size": 9, "stride": 4})])
def test_anchoring_gives_every_latent_frame_one_latent_frames_region(pipe, max_update_steps, window):
    rad = {"max_update_steps": max_update_steps, "refinement_thresholds": {}, "step_size": 100.0}
    plain = _latents_after(pipe, 2, rad=rad, window=window)
    anchored = _latents_after(pipe, 2, rad={**rad, "anchor_step_ratios": [0.5]}, window=window)  # 4 steps: after step 2
    inside = torch.zeros_like(plain, dtype=torch.bool)
    inside[..., :4, :4] = True  # the circle's box 0…32 px: latent cells rows 0…3, columns 0…3, all 5 latent frames
    assert torch.equal(anchored[~inside], plain[~inside])  # only the region's cells change
    patches = [anchored[0, :, f, :4, :4] for f in range(5)]
    before = [plain[0, :, f, :4, :4] for f in range(5)]
    assert any(not torch.equal(b, before[0]) for b in before[1:])  # without anchoring the latent frames differ
    assert all(torch.equal(p, patches[0]) for p in patches[1:])
    assert any(torch.allclose(patches[0], b, rtol=0, atol=1e-5) for b in before)  # one latent frame's own latents
    assert not torch.equal(anchored, plain)


def test_anchoring_is_off_without_rad(pipe):
    off = {"enabled": False}
    assert torch.equal(_latents_after(pipe, 3, rad={**off, "anchor_step_ratios": [0.5]}), _latents_after(pipe, 3, rad=off))
