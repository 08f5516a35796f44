"""ReAtCo on Wan (issue 28), on tiny random Wan components saved in the diffusers layout (tests/tiny_wan.py)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from reatco.rad.attention_maps import AttentionStore
from reatco.backbones.wan import WanReAtCoPipeline, plan_from_folder, resolve_rad_blocks
from reatco.backbones.wan import geometry
from reatco.backbones.wan.attention import record_wan_cross_attention
from reatco.backbones.wan.flow import renoise, step_sigmas
from reatco.backbones.wan.words import tokenize_wan_prompt, word_positions
from reatco.config import section_settings
from reatco.errors import ConfigError
from reatco.irjs.blend import InvariantRegion
from reatco.rad.guidance import RADGuidance
from tiny_wan import save_tiny_wan, tiny_clip, tiny_wan_components

PROMPT = "a red circle and a blue square on the sea"
SIZE = dict(height=32, width=48)  # 2 × 3 tokens of 16 px; latents 4 × 6
CIRCLE = {"word": "circle", "box": [0, 0, 32, 32]}


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan")


@pytest.fixture(scope="module")
def folder2(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan22") / "tiny-wan-2experts", two_experts=True)


@pytest.fixture(scope="module")
def pipe(folder):
    return _quiet(WanReAtCoPipeline.from_pretrained(folder))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- geometry and words


def test_frame_count_must_be_4k_plus_1_unless_padding():
    assert geometry.check_frame_count(17) == 17
    with pytest.raises(ConfigError) as err:
        geometry.check_frame_count(16)
    assert err.value.field == "video.n_frames" and "17" in str(err.value) and "pad_frames" in str(err.value)
    assert geometry.check_frame_count(16, pad=True) == 17
    clip = torch.arange(16.0).view(16, 1, 1, 1).expand(16, 3, 2, 2)
    padded = geometry.pad_clip(clip, 17)
    assert padded.shape[0] == 17 and torch.equal(padded[16], clip[15]) and torch.equal(padded[:16], clip)


def test_regions_on_latent_frames_are_unions_of_their_pixel_frames():
    assert geometry.latent_frame_groups(9) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    masks = torch.zeros(2, 9, 3, 4)
    masks[0, 0, 0, 0] = 1  # frame 0 alone → latent frame 0
    masks[0, 2, 1, 1] = 1  # frames 2 and 4 → latent frame 1
    masks[0, 4, 2, 3] = 1
    masks[1, 5, 0, 3] = 1  # frame 5 → latent frame 2, not 1
    lat = geometry.latent_frame_union(masks)
    assert lat.shape == (2, 3, 3, 4)
    expected = torch.zeros(2, 3, 3, 4)
    expected[0, 0, 0, 0] = expected[0, 1, 1, 1] = expected[0, 1, 2, 3] = expected[1, 2, 0, 3] = 1
    assert torch.equal(lat, expected)


def test_a_token_is_16_px_and_sizes_are_checked():
    assert geometry.TOKEN_PX == 16
    geometry.check_size(480, 832)
    with pytest.raises(ConfigError) as err:
        geometry.check_size(480, 840)
    assert err.value.field == "video.width"


def test_word_positions_are_umt5_columns(pipe):
    tokens = tokenize_wan_prompt(pipe.tokenizer, PROMPT)
    assert tokens.tokens[-1] == "</s>" and tokens.n_real == len(PROMPT.split()) + 1
    assert word_positions(pipe.tokenizer, tokens, "circle") == [2]
    assert word_positions(pipe.tokenizer, tokens, "blue square") == [5, 6]
    assert word_positions(pipe.tokenizer, tokens, "a", occurrence=2) == [4]
    with pytest.raises(ConfigError) as err:
        word_positions(pipe.tokenizer, tokens, "a", field="objects[0].word")
    assert err.value.field == "objects[0].word" and "occurrence" in str(err.value)


# ---------------------------------------------------------------- bad input, before any weights load


@pytest.mark.parametrize("change, field", [
    (dict(n_frames=16), "video.n_frames"),
    (dict(objects=[{"word": "dog", "box": [0, 0, 32, 32]}]), "objects[0].word"),
    (dict(rad_blocks=[5]), "rad_blocks"),
    (dict(rad_blocks=[]), "rad_blocks"),
    (dict(objects=[{"word": "circle", "box": [0, 0, 8, 8]}]), "objects[0].box"),
])
def test_bad_input_is_refused_naming_the_field_before_any_weights_load(folder, tmp_path, change, field):
    import shutil

    bare = tmp_path / "no-weights"
    shutil.copytree(folder, bare)
    for sub in ("transformer", "vae", "text_encoder"):  # only configs and the tokenizer remain
        for f in (bare / sub).iterdir():
            if f.suffix in (".safetensors", ".bin"):
                f.unlink()
    args = dict(prompt=PROMPT, objects=[CIRCLE], n_frames=5, **SIZE)
    args.update(change)
    with pytest.raises(ConfigError) as err:
        plan_from_folder(bare, **args)
    assert err.value.field.startswith(field), err.value
    plan = plan_from_folder(bare, PROMPT, [CIRCLE], n_frames=16, pad_frames=True, **SIZE)  # the option pads
    assert plan.run_frames == 17 and plan.objects[0].token_indices == (2,)


def test_pipeline_refuses_bad_input_naming_the_field(pipe):
    with pytest.raises(ConfigError) as err:
        pipe(PROMPT, video=tiny_clip(4), objects=[CIRCLE], num_inference_steps=2)
    assert err.value.field == "video.n_frames"
    with pytest.raises(ConfigError) as err:
        pipe(PROMPT, video=tiny_clip(5), objects=[CIRCLE], rad_blocks=[2], num_inference_steps=2)
    assert err.value.field == "rad_blocks"
    with pytest.raises(ConfigError) as err:
        pipe(PROMPT, video=tiny_clip(5), objects=[CIRCLE], irjs={"decode_statistics": "source"}, num_inference_steps=2)
    assert err.value.field == "irjs.decode_statistics"
    with pytest.raises(ConfigError) as err:
        pipe(PROMPT, video=tiny_clip(5), objects=[CIRCLE], inversion_trajectory=torch.zeros(3, 1, 16, 2, 4, 6),
             num_inference_steps=4)
    assert err.value.field == "inversion_trajectory"
    # the default: the middle of the stack to two thirds of it (measured best on the shapes DiT: [3, 4] of 6)
    assert resolve_rad_blocks(None, 30) == list(range(15, 21)) and resolve_rad_blocks(None, 6) == [3, 4]
    assert resolve_rad_blocks(None, 40) == list(range(20, 27)) and resolve_rad_blocks(None, 2) == [1]


# ---------------------------------------------------------------- the recorder


def _attn2_inputs(transformer, block):
    """Capture attn2's (hidden_states, encoder_hidden_states) of `block` in the next forward."""
    seen = {}

    def hook(module, args, kwargs):
        seen["x"], seen["ctx"] = args[0].detach().clone(), args[1].detach().clone()

    return seen, transformer.blocks[block].attn2.register_forward_pre_hook(hook, with_kwargs=True)


def test_recorded_maps_equal_an_explicit_reference_attention(pipe):
    transformer = pipe.transformer
    emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    tokens = tokenize_wan_prompt(pipe.tokenizer, PROMPT)
    n_real, columns = tokens.n_real, [2, 5, 6]
    x = torch.randn(1, 16, 2, 4, 6, generator=_gen(3))
    t = torch.tensor([700.0])
    store = AttentionStore(grid=(2, 3), stop_early=False)
    seen, handle = _attn2_inputs(transformer, 1)
    try:
        with record_wan_cross_attention([transformer], [0, 1], store, columns, n_real), store.recording("observe", 2):
            transformer(x, t, emb, return_dict=False)
            recorded = [m.clone() for m in store._maps]
    finally:
        handle.remove()
    assert len(recorded) == 2 and recorded[1].shape == (2, 6, 3)  # (latent frames, h·w, kept columns), head mean
    attn = transformer.blocks[1].attn2
    q = attn.norm_q(attn.to_q(seen["x"])).unflatten(2, (attn.heads, -1)).transpose(1, 2).double()
    k = attn.norm_k(attn.to_k(seen["ctx"])).unflatten(2, (attn.heads, -1)).transpose(1, 2).double()
    assert seen["ctx"].shape[1] == 512  # the padded text: the model's softmax runs over all of it
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)  # the model's own probabilities
    share = probs[..., :n_real] / probs[..., :n_real].sum(-1, keepdim=True)  # renormalised over the real tokens
    reference = share[..., columns].mean(1)[0].reshape(2, 6, 3)  # head mean, frames first
    assert (recorded[1].double() - reference).abs().max() <= 1e-5
    assert probs[..., n_real:].sum(-1).mean() > 0.5  # the padding does take most of the raw attention here


def test_recording_leaves_the_frames_unchanged(pipe):
    args = dict(video=tiny_clip(5), objects=[CIRCLE], num_inference_steps=3, guidance_scale=3.0, rad={"enabled": False},
                output_type="pt")
    plain = pipe(PROMPT, generator=_gen(), **args)
    observed = pipe(PROMPT, generator=_gen(), return_attention=True, **args)
    assert observed.attention_maps is not None and observed.attention_maps.shape == (1, 2, 2, 3)
    assert (plain.frames - observed.frames).abs().max() <= 1e-5


# ---------------------------------------------------------------- the pipeline against WanPipeline


@pytest.mark.parametrize("two_experts", [False, True])
def test_edit_from_noise_equals_wanpipeline(folder, folder2, two_experts):
    from diffusers import WanPipeline

    path = folder2 if two_experts else folder
    reference = _quiet(WanPipeline.from_pretrained(path))
    ours = _quiet(WanReAtCoPipeline.from_pretrained(path))
    settings = dict(num_inference_steps=4, guidance_scale=4.0, **SIZE)
    expected = reference(PROMPT, num_frames=5, generator=_gen(7), output_type="pt", **settings).frames[0]
    got = ours(PROMPT, n_frames=5, generator=_gen(7), rad={"enabled": False}, irjs={"enabled": False}, output_type="pt",
               **settings).frames[0]
    assert got.shape == expected.shape == (5, 3, 32, 48)
    assert (got - expected).abs().max() <= 1e-6


def test_two_expert_pipeline_records_on_both_experts(folder2):
    from reatco.backbones.wan.attention import WanCrossAttentionRecorder

    pipe = _quiet(WanReAtCoPipeline.from_pretrained(folder2))
    calls = {1: 0, 2: 0}

    def counter(expert):
        def hook(module, args, kwargs):
            if isinstance(module.processor, WanCrossAttentionRecorder) and torch.is_grad_enabled():
                calls[expert] += 1  # a RAD pass through this expert's recorded block
        return hook

    block = resolve_rad_blocks(None, len(pipe.transformer.blocks))[0]  # a block RAD reads by default
    handles = [pipe.transformer.blocks[block].attn2.register_forward_pre_hook(counter(1), with_kwargs=True),
               pipe.transformer_2.blocks[block].attn2.register_forward_pre_hook(counter(2), with_kwargs=True)]
    try:
        out = pipe(PROMPT, video=tiny_clip(5), objects=[CIRCLE], num_inference_steps=4, guidance_scale=3.0,
                   generator=_gen(), rad={"max_update_steps": 4})
    finally:
        for h in handles:
            h.remove()
    boundary = 0.875 * 1000
    high = [r for r in out.rad_losses if r["timestep"] >= boundary]
    assert high and len(high) < len(out.rad_losses)  # both experts' steps are among the RAD steps
    assert calls[1] >= len(high) and calls[2] >= len(out.rad_losses) - len(high)


# ---------------------------------------------------------------- RAD


def _guidance(pipe, settings=None, blocks=(0,)):
    emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    tokens = tokenize_wan_prompt(pipe.tokenizer, PROMPT)
    masks = torch.zeros(1, 2, 2, 3)
    masks[0, :, :, :2] = 1  # the circle on the left two thirds, both latent frames
    # share: RAD reads each word's share of the real tokens' attention (the maps the recorder gives), as
    # the UNet's shapes model does; softmax (× temperature) over those shares is the other choice
    rad = section_settings("rad", {"step_size": 200.0, "token_normalization": "share", **(settings or {})}, steps=10)
    backbone = pipe.backbone
    layers = backbone.attention_layers(geometry.TOKEN_PX, blocks=list(blocks))
    return RADGuidance(backbone, layers, emb, ["circle"], [[2]], masks, rad, backbone.text_token_count(tokens, False), 10)


def test_rad_update_lowers_the_loss_and_changes_only_the_latent(pipe):
    guidance = _guidance(pipe)
    x = torch.randn(1, 16, 2, 4, 6, generator=_gen(1))
    t = torch.tensor(900.0)
    weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cond = guidance.cond.clone()
    with guidance.attached():
        before = guidance.forward(x, t).loss.item()
        x_new, record, word_maps, _ = guidance.update(x, 0, t)
        after = guidance.forward(x_new, t).loss.item()
    assert after < before and record["loss"] == pytest.approx(before, rel=1e-5)
    assert not torch.equal(x_new, x) and word_maps.shape == (1, 2, 2, 3)
    assert torch.equal(guidance.cond, cond)
    assert all(torch.equal(v, weights[k]) for k, v in pipe.transformer.state_dict().items())
    assert all(p.requires_grad for p in pipe.transformer.parameters())  # unfrozen again on exit
    assert pipe.transformer.blocks[0].attn2.processor.__class__.__name__ == "WanAttnProcessor"  # restored


def test_rad_pass_stops_after_the_last_recorded_block_and_checkpointing_gives_the_same_update(pipe):
    ran = []
    handle = pipe.transformer.blocks[1].register_forward_hook(lambda *a: ran.append(1))
    x = torch.randn(1, 16, 2, 4, 6, generator=_gen(2))
    t = torch.tensor(900.0)
    try:
        plain = _guidance(pipe)
        with plain.attached():
            x_plain = plain.update(x, 0, t)[0]
        assert not ran  # block 1 comes after the last recorded block (0): never run by the RAD pass
        checkpointed = _guidance(pipe, {"gradient_checkpointing": True})
        with checkpointed.attached():
            x_ckpt = checkpointed.update(x, 0, t)[0]
    finally:
        handle.remove()
    assert (x_plain - x_ckpt).abs().max() <= 1e-6
    assert not pipe.transformer.is_gradient_checkpointing


def test_a_whole_edit_runs_rad_on_its_update_steps(pipe):
    args = dict(video=tiny_clip(5), objects=[CIRCLE], num_inference_steps=4, guidance_scale=3.0, generator=_gen())
    out = pipe(PROMPT, rad={"max_update_steps": 3, "step_size": 200.0}, output_type="pt", **args)
    frames = out.frames[0]  # diffusers' video output: a batch of one clip
    assert [r["step"] for r in out.rad_losses] == [0, 1, 2]
    assert torch.isfinite(frames).all() and frames.shape == (5, 3, 32, 48)


# ---------------------------------------------------------------- IRJS and inversion


def test_irjs_outside_the_regions_is_exactly_the_renoised_source(pipe):
    video = tiny_clip(5)
    seen = []

    def keep(p, i, t, values):
        seen.append(values["latents"].clone())
        return values

    source = pipe.encode_video(video)
    emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    trajectory = pipe.invert(source, emb, 3)
    out = pipe(PROMPT, video=video, objects=[CIRCLE], num_inference_steps=3, guidance_scale=3.0, generator=_gen(),
               inversion_trajectory=trajectory, rad={"enabled": False},
               irjs={"placement": "after_step", "source": "inversion"}, callback_on_step_end=keep, output_type="latent")
    outside = torch.ones(1, 1, 2, 4, 6, dtype=torch.bool)
    outside[..., :, :4, :4] = False  # the box 0…32 px: latent cells 0…3 in both latent frames
    for i, latents in enumerate(seen):  # after step i: the source at step i + 1's level (the clean source at the end)
        level = trajectory[3 - (i + 1)]
        assert torch.equal(latents.masked_select(outside), level.masked_select(outside))
        assert not torch.equal(latents, level)  # the region is the edit's own
    assert torch.equal(out.frames.masked_select(outside), source.masked_select(outside))


def test_irjs_fresh_noise_source_is_flow_renoising(pipe):
    source = torch.randn(1, 16, 2, 4, 6, generator=_gen(4))
    pipe.scheduler.set_timesteps(5)
    settings = section_settings("irjs", {"source": "noise"}, steps=5)
    region = InvariantRegion(pipe.backbone, settings, torch.zeros(1, 1, 2, 4, 6), source, None, _gen(9))
    got = region.source(2)
    noise = torch.randn(source.shape, generator=_gen(9))
    sigma = float(step_sigmas(pipe.scheduler)[2])
    assert torch.allclose(got, (1 - sigma) * source + sigma * noise, atol=1e-6)
    assert torch.equal(region.source(5), source)


# Reconstruction of the source latents (std 0.37, max 0.83) by sampling with the source prompt and no
# guidance from their flow inversion, on the tiny random model, max |error| (mean in brackets):
#   8 steps:  Euler 0.22 (0.065); fixed-point 1 iteration 0.051, 3: 4.9e-3, 6: 1.1e-4, 10: 8.3e-7 (2.1e-7)
#   50 steps: Euler 0.031 (9.4e-3); fixed-point 1: 1.0e-3, 3: 5.0e-6, 6: 4.2e-7
# The fixed-point solver is the exact inverse of the sampler's Euler step (k more model calls a step).
EULER_BOUND, FIXED_POINT_BOUND = 0.3, 1e-5


def test_inversion_then_sampling_reconstructs_the_source(pipe):
    video = tiny_clip(5)
    source = pipe.encode_video(video)
    emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    errors = {}
    for iters in (0, 10):
        trajectory = pipe.invert(source, emb, 8, fixed_point_iters=iters)
        assert trajectory.shape == (9, *source.shape) and torch.equal(trajectory[0], source)
        rebuilt = pipe(PROMPT, source_latents=source, inversion_trajectory=trajectory, num_inference_steps=8,
                       guidance_scale=1.0, rad={"enabled": False}, irjs={"enabled": False}, output_type="latent").frames
        errors[iters] = (rebuilt - source).abs().max().item()
    assert errors[0] <= EULER_BOUND and errors[10] <= FIXED_POINT_BOUND, errors


def test_inversion_free_start_runs_without_an_inversion(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "invert", lambda *a, **k: pytest.fail("inversion=False must not invert"))
    out = pipe(PROMPT, video=tiny_clip(5), objects=[CIRCLE], num_inference_steps=3, guidance_scale=3.0,
               generator=_gen(), inversion=False, rad={"enabled": False}, irjs={"placement": "after_step"},
               output_type="latent")
    source = pipe.encode_video(tiny_clip(5))
    outside = torch.ones(1, 1, 2, 4, 6, dtype=torch.bool)
    outside[..., :, :4, :4] = False
    assert torch.equal(out.frames.masked_select(outside), source.masked_select(outside))


def test_padding_option_edits_a_16_frame_clip_and_returns_16_frames(pipe):
    with pytest.raises(ConfigError):
        pipe(PROMPT, video=tiny_clip(8), objects=[CIRCLE], num_inference_steps=2)
    out = pipe(PROMPT, video=tiny_clip(8), objects=[CIRCLE], num_inference_steps=2, guidance_scale=3.0,
               pad_frames=True, generator=_gen(), rad={"max_update_steps": 1}, output_type="pt")
    assert out.frames[0].shape == (8, 3, 32, 48)


def test_per_frame_push_does_not_depend_on_the_number_of_latent_frames(pipe):
    """The RAD terms are means over the pass's latent frames, so a frame's gradient carries 1/F;
    α is scaled by F / rad.calibration_frames (latent frames on Wan): a frame whose own term is the
    same gets the same push in a pass over 2 or 4 latent frames."""
    from reatco.rad.guidance import RADPass

    class PerFrameLoss(RADGuidance):
        def forward(self, latents, t, frames=None):  # a loss that is a mean of per-frame terms
            x = latents.detach().requires_grad_(True)
            with torch.enable_grad():
                inner = (1 - torch.sigmoid(x.mean(dim=(0, 1, 3, 4))).mean()).reshape(1)
            n = x.shape[2]
            return RADPass(x, inner.sum(), inner, torch.zeros(1), torch.zeros(1, n, 2, 3), torch.zeros(1, n))

    pushes = []
    for n_latent in (2, 4):
        guidance = _guidance(pipe)
        guidance.__class__ = PerFrameLoss
        guidance.masks = torch.ones(1, n_latent, 2, 3)
        x = torch.zeros(1, 16, n_latent, 4, 6)
        pushes.append((guidance.update(x, 0, torch.tensor(900.0))[0] - x)[:, :, 0])
    assert pushes[0].abs().max() > 0 and torch.allclose(pushes[0], pushes[1], rtol=1e-6, atol=0)


def test_a_folder_with_wans_unipc_scheduler_loads_with_flow_matching_euler(tmp_path):
    """The released Wan folders ship UniPC (flow_shift 3 on 480p); the edit runs Euler with that shift,
    whose steps the flow inversion reverses exactly."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

    components = tiny_wan_components()
    components["scheduler"] = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      flow_shift=5.0)
    WanPipeline(**components).save_pretrained(tmp_path / "unipc")
    pipe = WanReAtCoPipeline.from_pretrained(tmp_path / "unipc")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 5.0


def test_decode_outside_source_keeps_the_source_pixels_outside_the_regions(pipe):
    video = tiny_clip(5)
    out = pipe(PROMPT, video=video, objects=[CIRCLE], num_inference_steps=2, guidance_scale=3.0, generator=_gen(),
               rad={"enabled": False}, irjs={"decode_outside": "source"}, output_type="pt")
    frames = out.frames[0]  # diffusers' video output: a batch of one clip
    source = pipe.decode_latents(pipe.encode_video(video))
    assert frames.shape == source.shape == (5, 3, 32, 48)
    assert torch.equal(frames[..., 32:], source[..., 32:])  # outside the box (x ≥ 32 px): the source's decode
    assert not torch.equal(frames[..., :32], source[..., :32])


def test_decode_outside_source_frames_keeps_each_pixel_frames_own_outside(pipe):
    """A latent frame covers pixel frames 1–4, and IRJS keeps only the union of their regions; with
    source_frames a pixel outside its own frame's box is the source's decode again."""
    video = tiny_clip(5)
    moving = {"word": "circle", "boxes": {0: [0, 0, 16, 32], 4: [32, 0, 48, 32]}}  # 8 px a frame, on the 8 px cells
    runs = {mode: pipe(PROMPT, video=video, objects=[moving], num_inference_steps=2, guidance_scale=3.0,
                       generator=_gen(), rad={"enabled": False}, irjs={"decode_outside": mode}, output_type="pt").frames[0]
            for mode in ("source", "source_frames")}
    source = pipe.decode_latents(pipe.encode_video(video))
    for f in range(5):
        x1 = 8 * f  # frame f's box: x from 8f to 8f + 16
        own = runs["source_frames"][f]
        assert torch.equal(own[..., :x1], source[f, ..., :x1]) and torch.equal(own[..., x1 + 16:], source[f, ..., x1 + 16:])
        assert torch.equal(own[..., x1:x1 + 16], runs["source"][f, ..., x1:x1 + 16])  # inside: the same edit
    # frame 4's own box is x 32–48; latent frame 1's union (frames 1–4) reaches back to x = 8: under
    # `source` those pixels are the edit's
    assert torch.equal(runs["source"][4, ..., :8], source[4, ..., :8])
    assert not torch.equal(runs["source"][4, ..., 8:32], source[4, ..., 8:32])


# ---------------------------------------------------------------- the backbone seam


def test_text_attention_from_a_first_column_of_zero_keeps_the_unet_numbers_at_one():
    """umT5 has no start token (first_text_column 0); CLIP's SOT sits at column 0 (1, the default)."""
    from reatco.rad import losses

    maps = torch.rand(2, 3, 4, 7, generator=_gen(5))
    unet = losses.text_attention(maps, 4, normalization="share")
    assert torch.equal(unet, losses.text_attention(maps, 4, normalization="share", first=1))
    assert torch.equal(unet, maps[..., 1:5] / maps[..., 1:5].sum(-1, keepdim=True))
    wan = losses.text_attention(maps, 7, normalization="share", first=0)  # every column is a prompt token
    assert torch.allclose(wan, maps / maps.sum(-1, keepdim=True), atol=0, rtol=1e-6)
    assert torch.equal(losses.word_attention(wan, [0, 2], first=0), wan[..., 0] + wan[..., 2])
    assert torch.equal(losses.word_attention(unet, [1, 3]), unet[..., 0] + unet[..., 2])  # tokenizer index − 1
    with pytest.raises(ValueError, match="outside 0…6"):
        losses.word_attention(wan, [7], first=0)
    with pytest.raises(ValueError, match="n_text_tokens"):
        losses.text_attention(maps, 7, first=1)  # SOT leaves 6 columns


@pytest.mark.parametrize("prompt_only", [False, True])
def test_rad_reads_each_words_share_of_the_real_tokens_at_its_own_umt5_column(pipe, prompt_only):
    """Through the seam: RAD's word map of "circle" (umT5 position 2, no start token) is that
    token's share of the attention on the prompt's real tokens (rad.normalize_eot: without
    `</s>`), never the padding's, against a reference from the block's own q/k."""
    backbone = pipe.backbone
    assert backbone.first_text_column == 0 and pipe.transformer.blocks[0].attn2 is not None
    tokens = backbone.tokenize(PROMPT)
    n = backbone.text_token_count(tokens, prompt_only)
    assert n == tokens.n_real - prompt_only
    guidance = _guidance(pipe, {"smoothing": False, "normalize_eot": prompt_only})
    guidance.n_text_tokens = n
    x = torch.randn(1, 16, 2, 4, 6, generator=_gen(6))
    seen, handle = _attn2_inputs(pipe.transformer, 0)
    try:
        with guidance.attached():
            word_maps = guidance.forward(x, torch.tensor(700.0)).word_maps.detach()
    finally:
        handle.remove()
    attn = pipe.transformer.blocks[0].attn2
    q = attn.norm_q(attn.to_q(seen["x"])).unflatten(2, (attn.heads, -1)).transpose(1, 2).double()
    k = attn.norm_k(attn.to_k(seen["ctx"])).unflatten(2, (attn.heads, -1)).transpose(1, 2).double()
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    share = probs[..., 2] / probs[..., :n].sum(-1)  # "circle"'s share of the n real tokens
    reference = share.mean(1)[0].reshape(2, 2, 3)  # head mean, (latent frames, h, w)
    assert word_maps.shape == (1, 2, 2, 3)
    assert (word_maps[0].double() - reference).abs().max() <= 1e-5


def test_the_backbone_implements_the_seam_for_wan(pipe):
    from reatco.backbones.base import Backbone
    from reatco.backbones.wan import WanBackbone

    backbone = pipe.backbone
    assert isinstance(backbone, WanBackbone) and isinstance(backbone, Backbone) and backbone.name == "wan"
    backbone.check_frames(9)
    with pytest.raises(ConfigError) as err:
        backbone.check_frames(8, field="video.n_frames")
    assert err.value.field == "video.n_frames"
    assert backbone.frame_groups(9) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]] and backbone.latent_frames(9) == 3
    assert backbone.attention_layers(16) == ["blocks.1.attn2.processor"]  # the default for 2 blocks: the second
    assert backbone.attention_layers(16, blocks=[1, 0]) == ["blocks.0.attn2.processor", "blocks.1.attn2.processor"]
    for kwargs, field in ((dict(cell_px=32), "model.attention_cell_px"), (dict(cell_px=16, blocks=[2]), "rad.blocks")):
        with pytest.raises(ConfigError) as err:
            backbone.attention_layers(**kwargs)
        assert err.value.field == field
    assert backbone.attention_grid(32, 48, 16) == (2, 3)
    assert backbone.word_token_indices(PROMPT, "blue square") == [5, 6]
    with torch.no_grad():  # as WanPipeline's call encodes
        emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    assert torch.equal(backbone.encode_prompt(PROMPT), emb)  # WanPipeline's embeddings, zero padding included
    assert torch.equal(backbone.encode_prompt(backbone.tokenize(PROMPT)), emb)
    with pytest.raises(ValueError, match="decode_statistics"):
        backbone.decode_latents(torch.zeros(1, 16, 2, 4, 6), torch.zeros(1, 16, 2, 4, 6))
    timesteps = backbone.set_timesteps(4)
    source, noise = torch.randn(1, 16, 2, 4, 6, generator=_gen(1)), torch.randn(1, 16, 2, 4, 6, generator=_gen(2))
    sigma = float(step_sigmas(pipe.scheduler)[1])
    assert torch.allclose(backbone.renoise_source(source, timesteps[1], noise), (1 - sigma) * source + sigma * noise, atol=1e-6)
    # another timestep: σ = t / 1000, as on the UNet any training timestep (tests/test_wan_source_regions.py)
    assert torch.allclose(backbone.renoise_source(source, torch.tensor(1.5), noise), 0.9985 * source + 0.0015 * noise, atol=1e-6)
    with pytest.raises(ValueError, match="outside the scheduler's"):
        backbone.renoise_source(source, torch.tensor(1001.0), noise)
    with pytest.raises(ConfigError) as err:
        backbone.invert(source, PROMPT, 2, guidance_scale=2.0)
    assert err.value.field == "inversion.guidance_scale"
    trajectory = backbone.invert(source, PROMPT, 2, progress=False)
    assert torch.equal(trajectory, pipe.invert(source, emb, 2))  # the prompt or its embeddings: one inversion


def test_differentiable_freezes_and_checkpoints_both_experts(folder2):
    pipe = _quiet(WanReAtCoPipeline.from_pretrained(folder2))
    backbone = pipe.backbone
    experts = [pipe.transformer, pipe.transformer_2]
    assert {id(m) for m in backbone.denoiser.children()} == {id(m) for m in experts}
    boundary = 0.875 * 1000
    assert backbone.expert(boundary) is pipe.transformer and backbone.expert(boundary - 1) is pipe.transformer_2
    with backbone.differentiable(gradient_checkpointing=True):
        assert all(not p.requires_grad for m in experts for p in m.parameters())
        assert all(m.is_gradient_checkpointing for m in experts)
    assert all(p.requires_grad for m in experts for p in m.parameters())
    assert not any(m.is_gradient_checkpointing for m in experts)
