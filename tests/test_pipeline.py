"""ReAtCoPipeline on tiny random components: RAD, IRJS, windows, determinism, processors."""

import copy

import pytest
import torch

from reatco.backbones.tav.recording import record_cross_attention
from reatco.rad.attention_maps import AttentionStore
from reatco.backbones.tav import rad_attention_layers
from reatco.config import IRJSConfig, RADConfig, validate_rad
from reatco.errors import ConfigError
from reatco.pipeline import ReAtCoPipeline
from reatco.rad.guidance import RADGuidance

from tiny_models import tiny_sd_components

N_FRAMES, SIZE = 3, 32
PROMPT = "a cat and a dog on the grass"
# Boxes at 32×32 px; the tiny model's RAD grid cell is CELL px.
OBJECTS = [{"word": "cat", "box": [0, 0, 16, 16]}, {"word": "dog", "boxes": {0: [16, 16, 32, 32], 2: [16, 8, 32, 24]}}]


@pytest.fixture(scope="module")
def pipe():
    pipe = ReAtCoPipeline(**tiny_sd_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def cell(pipe):
    return pipe.vae_scale_factor * 2  # the tiny model's SD-like RAD layers: down_blocks.1 + up_blocks.1


def _video(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N_FRAMES, 3, SIZE, SIZE, generator=g) * 2 - 1


def _run(pipe, cell, **kwargs):
    args = dict(
        prompt=PROMPT, video=_video(), objects=OBJECTS, num_inference_steps=4, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(7), attention_cell_px=cell, output_type="latent",
        rad={"max_update_steps": 2, "refinement_thresholds": {}},
    )
    args.update(kwargs)
    return pipe(**args)


def _guidance(pipe, cell, rad=None, words=None):
    """A RADGuidance on the pipeline's UNet for PROMPT's objects, and random latents."""
    rad = rad or RADConfig()
    objects = pipe.prepare_objects(PROMPT, OBJECTS, N_FRAMES, SIZE, SIZE, cell)
    words, regions, indices = [o.word for o in objects], [o.region for o in objects], [o.token_indices for o in objects]
    from reatco.regions.region import object_masks

    masks = object_masks(regions, N_FRAMES, SIZE // cell, SIZE // cell)
    guidance = RADGuidance(pipe.backbone, rad_attention_layers(pipe.unet, pipe.vae_scale_factor, cell), pipe.encode_prompt(PROMPT),
                           words, indices, masks, rad, pipe.tokenizer.model_max_length - 2, num_steps=4)
    latents = torch.randn(1, 4, N_FRAMES, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor, generator=torch.Generator().manual_seed(1))
    return guidance, latents


def test_rad_update_lowers_the_loss_and_touches_only_the_latent(pipe, cell):
    guidance, latents = _guidance(pipe, cell, RADConfig(refinement_thresholds={}))
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    t = torch.tensor(500)
    with guidance.attached():
        first = guidance.forward(latents, t)
        grad = first.grad("full")
        assert grad.abs().sum() > 0
        assert all(p.grad is None for p in pipe.unet.parameters())
        second = guidance.forward(latents - 1e-2 / grad.abs().max() * grad, t)
        updated, record, _, _ = guidance.update(latents, 0, t, step_size=1e-2 / float(grad.abs().max()))
    assert second.loss < first.loss
    torch.testing.assert_close(updated, latents - 1e-2 / grad.abs().max() * grad)
    assert record["step"] == 0 and record["loss"] == pytest.approx(float(first.loss.detach()), rel=1e-6)
    assert guidance.records == [record]
    assert all(torch.equal(before[n], p) for n, p in pipe.unet.named_parameters())
    assert all(p.requires_grad for p in pipe.unet.parameters())  # unfrozen again on exit


def test_fast_rad_pass_equals_the_plain_one(pipe, cell):
    """Early stop and gradient checkpointing change the cost, not the loss or the gradient."""
    results = {}
    for name, early_stop in {"plain": False, "fast": True}.items():
        for ckpt in (False, True):
            guidance, latents = _guidance(pipe, cell, RADConfig(early_stop=early_stop, gradient_checkpointing=ckpt))
            with guidance.attached():
                assert pipe.unet.is_gradient_checkpointing == ckpt
                step = guidance.forward(latents, torch.tensor(500))
                results[(name, ckpt)] = (step.loss.detach(), step.word_maps, step.grad("full"))
            assert not pipe.unet.is_gradient_checkpointing
    ref_loss, ref_maps, ref_grad = results[("plain", False)]
    for key, (loss, maps, grad) in results.items():
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6, msg=str(key))
        torch.testing.assert_close(maps, ref_maps, rtol=0, atol=1e-6, msg=str(key))
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6, msg=str(key))


def test_two_objects_with_the_same_word_keep_two_loss_entries(pipe, cell):
    """Both "cat"s of "a cat and a cat" get their own report entry (they used to collapse)."""
    objects = [{"word": "cat", "occurrence": 1, "box": [0, 0, 16, 16]}, {"word": "cat", "occurrence": 2, "box": [16, 16, 32, 32]}]
    out = _run(pipe, cell, prompt="a cat and a cat", objects=objects)
    record = out.rad_losses[0]
    assert list(record["inner"]) == ["cat", "cat#2"] and list(record["outer"]) == ["cat", "cat#2"]
    assert record["inner"]["cat"] != record["inner"]["cat#2"]


def test_recorder_restores_processors_even_on_error(pipe, cell):
    before = dict(pipe.unet.attn_processors)
    layers = rad_attention_layers(pipe.unet, pipe.vae_scale_factor, cell)
    with pytest.raises(RuntimeError):
        with record_cross_attention(pipe.unet, layers, AttentionStore()):
            assert any(pipe.unet.attn_processors[n] is not before[n] for n in layers)
            raise RuntimeError("boom")
    after = pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    _run(pipe, cell)
    after = pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_same_seed_gives_identical_frames(pipe, cell):
    a = _run(pipe, cell, output_type="pt").frames[0]
    b = _run(pipe, cell, output_type="pt").frames[0]
    assert torch.equal(a, b)
    c = _run(pipe, cell, output_type="pt", generator=torch.Generator().manual_seed(8)).frames[0]
    assert not torch.equal(a, c)


def test_irjs_after_step_returns_the_source_outside_the_regions(pipe, cell):
    video = _video()
    source = pipe.encode_video(video, torch.Generator().manual_seed(3))
    out = _run(pipe, cell, source_latents=source, video=None, irjs=IRJSConfig(placement="after_step")).frames
    from reatco.regions.region import object_masks
    from reatco.irjs.blend import latent_region_mask

    regions = [o.region for o in pipe.prepare_objects(PROMPT, OBJECTS, N_FRAMES, SIZE, SIZE, cell)]
    lh = SIZE // pipe.vae_scale_factor
    inside = latent_region_mask(object_masks(regions, N_FRAMES, lh, lh), lh, lh).bool().expand_as(out)
    assert inside.any() and (~inside).any()
    assert torch.equal(out[~inside], source[~inside])
    assert not torch.equal(out[inside], source[inside])


def test_irjs_before_step_feeds_the_source_trajectory_outside_the_regions(pipe, cell):
    source = pipe.encode_video(_video(), torch.Generator().manual_seed(3))
    trajectory = pipe.invert(source, "", 4)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].clone()) if args[0].shape[0] == 2 else None, with_kwargs=True)
    try:
        _run(pipe, cell, source_latents=source, video=None, inversion_trajectory=trajectory,
             irjs=IRJSConfig(placement="before_step", source="inversion"), rad={"enabled": False})
    finally:
        hook.remove()
    from reatco.regions.region import object_masks
    from reatco.irjs.blend import latent_region_mask

    regions = [o.region for o in pipe.prepare_objects(PROMPT, OBJECTS, N_FRAMES, SIZE, SIZE, cell)]
    lh = SIZE // pipe.vae_scale_factor
    outside = ~latent_region_mask(object_masks(regions, N_FRAMES, lh, lh), lh, lh).bool().expand_as(source)
    assert len(seen) == 4
    for i, x in enumerate(seen):
        torch.testing.assert_close(x[1:][outside], trajectory[4 - i][outside])


def _first_unet_input(pipe, cell, **kwargs):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0][1:].clone()) if not seen else None, with_kwargs=True)
    try:
        _run(pipe, cell, video=None, rad={"enabled": False}, irjs={"enabled": False}, **kwargs)
    finally:
        hook.remove()
    return seen[0]


def _start_case(pipe, cell):
    """The source latents' inversion (as pipeline kwargs), its last latent, each object's latent
    cells (J, F, h, w) and the union of the regions' cells in the latents' shape."""
    from reatco.regions.region import object_masks
    from reatco.irjs.blend import latent_region_mask

    source = pipe.encode_video(_video(), torch.Generator().manual_seed(3))
    trajectory = pipe.invert(source, "", 4)
    regions = [o.region for o in pipe.prepare_objects(PROMPT, OBJECTS, N_FRAMES, SIZE, SIZE, cell)]
    lh = SIZE // pipe.vae_scale_factor
    coverage = object_masks(regions, N_FRAMES, lh, lh)
    inside = latent_region_mask(coverage, lh, lh).bool().expand_as(source)
    return dict(source_latents=source, inversion_trajectory=trajectory), trajectory, coverage >= 0.5, inside


def test_start_in_regions_noise_redraws_only_the_regions_cells(pipe, cell):
    common, trajectory, _, inside = _start_case(pipe, cell)
    assert torch.equal(_first_unet_input(pipe, cell, **common), trajectory[-1])  # the paper's start
    start = _first_unet_input(pipe, cell, start_in_regions="noise", **common)
    assert torch.equal(start[~inside], trajectory[-1][~inside])
    assert (start[inside] != trajectory[-1][inside]).all()
    assert torch.equal(start, _first_unet_input(pipe, cell, start_in_regions="noise", **common))  # seeded
    other = _first_unet_input(pipe, cell, start_in_regions="noise", generator=torch.Generator().manual_seed(8), **common)
    assert not torch.equal(start[inside], other[inside])
    with pytest.raises(ValueError, match="start_in_regions"):
        _run(pipe, cell, start_in_regions="zeros")


def test_start_in_regions_tracked_noise_moves_each_objects_noise_with_its_region(pipe, cell):
    common, trajectory, per_object, inside = _start_case(pipe, cell)
    start = _first_unet_input(pipe, cell, start_in_regions="tracked_noise", **common)
    assert torch.equal(start[~inside], trajectory[-1][~inside])
    assert not torch.equal(start[inside], _first_unet_input(pipe, cell, start_in_regions="noise", **common)[inside])
    dog = per_object[1]  # the dog's box moves up between frames
    rows = [int(dog[f].any(1).nonzero()[0, 0]) for f in range(N_FRAMES)]
    assert rows[0] != rows[2]
    h = int(dog[0].any(1).sum())
    cols = dog[0].any(0)
    for f in range(1, N_FRAMES):
        torch.testing.assert_close(start[0, :, f, rows[f]:rows[f] + h][..., cols], start[0, :, 0, rows[0]:rows[0] + h][..., cols],
                                   rtol=0, atol=0)


def _latents_at_step(pipe, cell, step, **kwargs):
    seen = {}

    def keep(p, i, t, tensors):
        if i == step:
            seen["latents"] = tensors["latents"].clone()
        return {}

    _run(pipe, cell, callback_on_step_end=keep, **kwargs)
    return seen["latents"]


def _region_patches(latents, cells):
    """Each frame's latents over the bounding box of its region's cells (all the same size here)."""
    patches = []
    for f in range(cells.shape[0]):
        rows, cols = cells[f].any(1).nonzero()[:, 0], cells[f].any(0).nonzero()[:, 0]
        patches.append(latents[0, :, f, int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1])
    return patches


# RAD passes on steps 0-1 only (the anchor step's attention is observed in its UNet call), or on every step
@pytest.mark.parametrize("max_update_steps", [2, 4])
def test_anchoring_gives_every_frame_of_an_object_one_frames_region_latents(pipe, cell, max_update_steps):
    common, _, per_object, inside = _start_case(pipe, cell)
    rad = {"max_update_steps": max_update_steps, "refinement_thresholds": {}}
    common.update(start_in_regions="noise", irjs={"placement": "after_step"})
    plain = _latents_at_step(pipe, cell, 2, rad=rad, **common)
    anchored = _latents_at_step(pipe, cell, 2, rad={**rad, "anchor_step_ratios": [0.5]}, **common)  # 4 steps: after step 2
    assert torch.equal(anchored[~inside], plain[~inside])  # only the regions' cells change
    for cells in per_object:  # the cat stays put, the dog moves up
        patches, before = _region_patches(anchored, cells), _region_patches(plain, cells)
        assert any(not torch.equal(b, before[0]) for b in before[1:])  # without anchoring the frames differ
        for patch in patches[1:]:
            torch.testing.assert_close(patch, patches[0], rtol=0, atol=0)
        # ...and are one frame's own latents (an observed step records its attention explicitly: float rounding)
        assert any(torch.allclose(patches[0], b, rtol=0, atol=1e-5) for b in before)
    later = _run(pipe, cell, rad={**rad, "anchor_step_ratios": [0.5]}, **common).frames
    assert torch.isfinite(later).all() and not torch.equal(later, _run(pipe, cell, rad=rad, **common).frames)


def test_a_later_anchor_step_anchors_again(pipe, cell):
    common, _, per_object, _ = _start_case(pipe, cell)
    rad = {"max_update_steps": 4, "refinement_thresholds": {}}
    common.update(start_in_regions="noise", irjs={"placement": "after_step"})
    once = _latents_at_step(pipe, cell, 2, rad={**rad, "anchor_step_ratios": [0.25]}, **common)  # after step 1
    twice = _latents_at_step(pipe, cell, 2, rad={**rad, "anchor_step_ratios": [0.25, 0.5]}, **common)  # and step 2
    for cells in per_object:
        after_one_more_step = _region_patches(once, cells)
        assert any(not torch.equal(p, after_one_more_step[0]) for p in after_one_more_step[1:])  # the frames drift apart
        patches = _region_patches(twice, cells)
        for patch in patches[1:]:
            torch.testing.assert_close(patch, patches[0], rtol=0, atol=0)
    # the list's order and repeats do not matter: each listed step anchors once
    torch.testing.assert_close(twice, _latents_at_step(pipe, cell, 2, rad={**rad, "anchor_step_ratios": [0.5, 0.25, 0.5]},
                                                       **common), rtol=0, atol=0)


def test_anchoring_is_off_with_rad_and_its_ratios_are_checked(pipe, cell):
    common, *_ = _start_case(pipe, cell)
    common.update(start_in_regions="noise")
    off = {"enabled": False}
    torch.testing.assert_close(_run(pipe, cell, rad={**off, "anchor_step_ratios": [0.5]}, **common).frames,
                               _run(pipe, cell, rad=off, **common).frames, rtol=0, atol=0)
    for bad, k in (([1.0], 0), ([0.2, -0.1], 1)):
        with pytest.raises(ConfigError, match=rf"^rad.anchor_step_ratios.{k}: must be a fraction of the steps in \[0, 1\)"):
            _run(pipe, cell, rad={"anchor_step_ratios": bad}, **common)
    with pytest.raises(ConfigError, match=r"^rad.anchor_step_ratios"):
        _run(pipe, cell, rad={"anchor_step_ratios": 0.2}, **common)  # a list, not a number
    with pytest.raises(ConfigError, match=r"^rad.anchor_step_ratios: "):
        _run(pipe, cell, rad=RADConfig(anchor_step_ratios=0.2), **common)
    with pytest.raises(ConfigError, match=r"^rad.anchor_step_ratios: must be a list of fractions"):
        validate_rad(RADConfig(anchor_step_ratios=0.2), 50)  # the validator alone, without the typed merge


def test_decode_statistics_source_decodes_with_the_source_frames_statistics(pipe, cell):
    from reatco.irjs.decoding import decode_with_reference_statistics

    source = pipe.encode_video(_video(), torch.Generator().manual_seed(3))
    common = dict(source_latents=source, video=None, irjs=IRJSConfig(placement="after_step"))
    latents = _run(pipe, cell, **common).frames
    plain = _run(pipe, cell, output_type="pt", **common).frames[0]
    fixed = _run(pipe, cell, output_type="pt", irjs=IRJSConfig(placement="after_step", decode_statistics="source"),
                 source_latents=source, video=None).frames[0]
    assert torch.equal(plain, pipe.decode_latents(latents)) and not torch.equal(fixed, plain)
    torch.testing.assert_close(fixed, decode_with_reference_statistics(pipe.decode_latents, pipe.vae.decoder, source, latents))
    pipe.enable_vae_slicing()  # one frame at a time: the same statistics, frame by frame
    try:
        sliced = _run(pipe, cell, output_type="pt", irjs=IRJSConfig(placement="after_step", decode_statistics="source"),
                      source_latents=source, video=None).frames[0]
    finally:
        pipe.disable_vae_slicing()
    torch.testing.assert_close(sliced, fixed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("statistics", ["edit", "source"])
def test_decode_outside_source_keeps_the_source_decode_outside_the_regions(pipe, cell, statistics):
    from reatco.irjs.blend import latent_region_mask
    from reatco.regions.region import object_masks
    from reatco.regions.parsing import parse_region
    from reatco.regions.settings import object_settings

    source = pipe.encode_video(_video(), torch.Generator().manual_seed(3))
    irjs = IRJSConfig(placement="after_step", decode_statistics=statistics)
    common = dict(source_latents=source, video=None, output_type="pt")
    edited = _run(pipe, cell, irjs=irjs, **common).frames[0]
    kept = _run(pipe, cell, irjs=IRJSConfig(placement="after_step", decode_statistics=statistics, decode_outside="source"),
                **common).frames[0]
    source_decoded = pipe.decode_latents(source)
    h = SIZE // pipe.vae_scale_factor
    regions = [parse_region(object_settings(o), N_FRAMES, SIZE, SIZE, 1) for o in OBJECTS]
    cells = latent_region_mask(object_masks(regions, N_FRAMES, h, h), h, h)[0, 0]  # (F, h, w), 1 = edited
    edited_pixels = cells.repeat_interleave(pipe.vae_scale_factor, 1).repeat_interleave(pipe.vae_scale_factor, 2).bool()
    edited_pixels = edited_pixels[:, None].expand_as(kept)
    assert 0 < edited_pixels.float().mean() < 1
    # outside the regions' cells: the source's own decode; inside: the edit's decode, unchanged
    torch.testing.assert_close(kept[~edited_pixels], source_decoded[~edited_pixels], rtol=0, atol=1e-6)
    torch.testing.assert_close(kept[edited_pixels], edited[edited_pixels], rtol=0, atol=1e-6)
    assert (edited[~edited_pixels] - source_decoded[~edited_pixels]).abs().max() > 1e-3  # the leak it removes
    # source_frames (each pixel frame's own regions, for Wan's 4-frame latents) is source here: a latent frame a pixel frame
    per_frame = _run(pipe, cell, irjs=IRJSConfig(placement="after_step", decode_statistics=statistics,
                                                 decode_outside="source_frames"), **common).frames[0]
    assert torch.equal(per_frame, kept)


def test_keep_reference_pixels_mixes_by_the_upsampled_latent_mask():
    from reatco.irjs.decoding import keep_reference_pixels

    edit, ref = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).expand(2, 1, 2, 2)
    out = keep_reference_pixels(edit, ref, mask)
    assert torch.equal(out[:, :, :4, :4], torch.ones(2, 3, 4, 4)) and torch.equal(out[:, :, :, 4:], torch.zeros(2, 3, 8, 4))
    assert torch.equal(out[:, :, 4:, :4], torch.full((2, 3, 4, 4), 0.5))
    with pytest.raises(ValueError, match="does not tile"):
        keep_reference_pixels(edit, ref, torch.ones(2, 1, 3, 3))


def test_window_covering_the_clip_equals_a_single_pass(pipe, cell):
    whole = _run(pipe, cell).frames
    windowed = _run(pipe, cell, window={"size": N_FRAMES, "stride": 1}).frames
    assert torch.equal(whole, windowed)
    split = _run(pipe, cell, window={"size": 2, "stride": 1}).frames
    assert split.shape == whole.shape and not torch.equal(split, whole)


def test_rad_records_losses_and_attention(pipe, cell):
    out = _run(pipe, cell, return_attention=True, rad={"max_update_steps": 2, "refinement_thresholds": {0: 0.99}, "max_refinement_iters": 2})
    assert [r["step"] for r in out.rad_losses] == [0, 1]
    assert out.rad_losses[0]["refinement_iters"] == 2
    assert set(out.rad_losses[0]["inner"]) == {"cat", "dog"}
    assert out.attention_maps.shape == (2, N_FRAMES, SIZE // cell, SIZE // cell)
    plain = _run(pipe, cell, rad={"enabled": False}, return_attention=True)
    assert plain.rad_losses == []
    assert plain.attention_maps.shape == out.attention_maps.shape  # observed on the CFG pass


def test_rad_reads_a_phrase_as_the_sum_of_its_tokens_unless_told_mean(pipe, cell):
    objects = pipe.prepare_objects(PROMPT, [{"word": "a cat", "box": [0, 0, 16, 16]}], N_FRAMES, SIZE, SIZE, cell)
    assert [o.token_indices for o in objects] == [(1, 2)]
    indices = [o.token_indices for o in objects]
    maps = torch.rand(N_FRAMES, 2, 2, pipe.tokenizer.model_max_length, generator=torch.Generator().manual_seed(0))
    n_text = len(pipe.tokenizer(PROMPT).input_ids) - 2
    masks = torch.ones(1, N_FRAMES, 2, 2)

    def word_maps(rad):
        return RADGuidance(pipe.backbone, [], None, ["a cat"], indices, masks, rad, n_text, num_steps=1).word_maps(maps)

    summed = word_maps(RADConfig(normalize_eot=True))
    averaged = word_maps(RADConfig(normalize_eot=True, word_tokens="mean"))
    torch.testing.assert_close(summed, 2 * averaged)  # smoothing is linear
    assert float(summed.max()) <= 1 + 1e-6 and float(averaged.max()) <= 0.5 + 1e-6


def test_vae_slicing_keeps_the_frames(pipe, cell):
    whole = _run(pipe, cell, output_type="pt", rad={"enabled": False}).frames[0]
    pipe.enable_vae_slicing()
    try:
        assert pipe.vae.use_slicing
        sliced = _run(pipe, cell, output_type="pt", rad={"enabled": False}).frames[0]
    finally:
        pipe.disable_vae_slicing()
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-5)


def test_loads_from_a_stable_diffusion_folder(tmp_path):
    from reatco.backbones.tav import TuneAVideoUNet

    from tiny_models import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "sd")
    loaded = ReAtCoPipeline.from_pretrained(folder)
    assert isinstance(loaded.unet, TuneAVideoUNet) and type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.dtype == torch.float32 and loaded.vae_scale_factor == 2


def test_settings_from_python_are_validated_like_yaml(pipe, cell):
    from reatco.errors import ConfigError

    # JSON's string step keys refine like int keys (they used to be silently ignored)
    out = _run(pipe, cell, rad={"max_update_steps": 1, "refinement_thresholds": {"0": 0.99}, "max_refinement_iters": 2})
    assert out.rad_losses[0]["refinement_iters"] == 2
    for kwargs, field in (({"rad": {"refinement": "bogus"}}, "rad.refinement"),
                          ({"rad": RADConfig(refinement_thresholds={9: 0.5})}, "rad.refinement_thresholds.9"),
                          ({"window": {"size": 2, "stride": 3}}, "window.stride"),
                          ({"irjs": IRJSConfig(noise="per_frame")}, "irjs.noise"),
                          ({"irjs": {"placment": "after_step"}}, "irjs.placment")):
        with pytest.raises(ConfigError) as err:
            _run(pipe, cell, **kwargs)
        assert err.value.field == field, kwargs


def test_irjs_noise_per_window_or_shared_by_the_windows(pipe, cell):
    per_window = _run(pipe, cell, window={"size": 2}, irjs={"noise": "per_window"}).frames
    shared = _run(pipe, cell, window={"size": 2}, irjs={"noise": "per_step"}).frames
    assert not torch.allclose(per_window, shared)
    # one pass over the whole clip: one draw either way
    assert torch.equal(_run(pipe, cell, irjs={"noise": "per_window"}).frames, _run(pipe, cell, irjs={"noise": "per_step"}).frames)


def test_refinement_modes(pipe, cell):
    """official: at least two steps once triggered (its stop test reads the loss before the last
    step); full / max_inner stop as soon as the latest pass meets the threshold."""
    runs = {mode: _run(pipe, cell, rad={"max_update_steps": 1, "refinement_thresholds": {0: 0.99}, "max_refinement_iters": 3,
                                        "refinement": mode}) for mode in ("official", "full", "max_inner")}
    assert {m: r.rad_losses[0]["refinement_iters"] for m, r in runs.items()} == {"official": 3, "full": 3, "max_inner": 3}
    assert not torch.allclose(runs["official"].frames, runs["full"].frames)
    # every mode's refinement steps move the latent (max_inner's gradient once came back zero)
    plain = _run(pipe, cell, rad={"max_update_steps": 1, "refinement_thresholds": {}}).frames
    assert all(not torch.allclose(r.frames, plain) for r in runs.values())


def test_resolved_edit_objects_are_taken_as_they_are(pipe, cell):
    """The runner resolves each object once (region, tokens); the pipeline takes EditObjects as
    they are and gives the same edit as from the config-style dicts."""
    objects = pipe.prepare_objects(PROMPT, OBJECTS, N_FRAMES, SIZE, SIZE, cell)
    assert [(o.word, o.token_indices) for o in objects] == [("cat", (2,)), ("dog", (5,))]
    assert pipe.prepare_objects(PROMPT, objects, N_FRAMES, SIZE, SIZE, cell) == objects
    assert torch.equal(_run(pipe, cell, objects=objects).frames, _run(pipe, cell).frames)


def test_the_attention_store_records_only_inside_recording_and_is_off_after_an_error(pipe, cell):
    from reatco.backbones.tav.recording import record_cross_attention
    from reatco.rad.attention_maps import AttentionStore

    layers = rad_attention_layers(pipe.unet, pipe.vae_scale_factor, cell)
    store = AttentionStore(grid=(SIZE // cell, SIZE // cell), stop_early=False)
    x = torch.randn(1, 4, N_FRAMES, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor,
                    generator=torch.Generator().manual_seed(0))
    cond = pipe.encode_prompt(PROMPT)
    with record_cross_attention(pipe.unet, layers, store), torch.no_grad():
        pipe.unet(x, 500, encoder_hidden_states=cond)
        assert store.n_recorded == 0 and not store.explicit  # off: plain SDPA, nothing kept
        with store.recording("record"):
            pipe.unet(x, 500, encoder_hidden_states=cond)
            assert store.n_recorded == len(layers)
        with pytest.raises(RuntimeError, match="boom"), store.recording("replay"):
            assert store.n_recorded == 0 and store.explicit  # entering drops the maps of before
            raise RuntimeError("boom")
        assert store.mode == "off"
    with pytest.raises(ValueError, match="unknown attention store mode"), store.recording("keep"):
        pass
