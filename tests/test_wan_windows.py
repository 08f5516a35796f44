"""Long clips on Wan: temporal windows over latent frames (reatco/backbones/wan/windows.py), on the
tiny random Wan of tests/tiny_wan.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from reatco.backbones.wan import WanReAtCoPipeline
from reatco.backbones.wan import windows as wan_windows
from reatco.video import write_frames

from scripts_loader import load_script
from tiny_wan import save_tiny_wan, tiny_clip

PROMPT = "a red circle and a blue square on the sea"
SIZE = dict(height=32, width=48)  # latents 4 × 6, tokens 2 × 3
CIRCLE = {"word": "circle", "box": [0, 0, 32, 32]}  # latent cells rows 0…3, columns 0…3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wanwin") / "tiny-wan")


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = WanReAtCoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_windows_of_latent_frames_cover_the_clip_and_their_weights_sum_to_one():
    # window.size / stride in pixel frames → latent frames: 9 frames hold 3, a stride of 4 frames is 1
    assert wan_windows.latent_windows(17, 9, 4) == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert wan_windows.latent_windows(17, 9, 8) == [[0, 1, 2], [2, 3, 4]]
    assert wan_windows.latent_windows(17, 9, 1) == wan_windows.latent_windows(17, 9, 4)  # rounded up to a latent frame
    assert wan_windows.latent_windows(17, None) == wan_windows.latent_windows(17, 17) == [[0, 1, 2, 3, 4]]
    assert wan_windows.latent_windows(21, 9, 8) == [[0, 1, 2], [2, 3, 4], [3, 4, 5]]  # a tail window ends the clip
    for windows, n in (([[0, 1, 2], [1, 2, 3], [2, 3, 4]], 5), ([[0, 1, 2], [2, 3, 4], [3, 4, 5]], 6), ([[0, 1], [2, 3]], 4)):
        weights = wan_windows.blend_weights(windows, n)
        assert torch.allclose(weights.sum(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-15)
        for k, frames in enumerate(windows):
            outside = [f for f in range(n) if f not in frames]
            assert (weights[k, frames] > 0).all() and (weights[k, outside] == 0).all()
    weights = wan_windows.blend_weights([[0, 1, 2], [1, 2, 3], [2, 3, 4]], 5)
    assert weights[0, 0] == 1 and weights[2, 4] == 1  # a frame in one window alone is that window's
    assert weights[1, 2] > weights[0, 2]  # the middle window's centre outweighs the first's edge
    values = [torch.full((1, 2, 3, 1, 1), float(k + 1)) for k in range(3)]
    blended = wan_windows.blend(values, [[0, 1, 2], [1, 2, 3], [2, 3, 4]], weights)
    expected = (weights * torch.arange(1.0, 4.0, dtype=torch.float64)[:, None]).sum(0).float()
    assert torch.allclose(blended[0, 0, :, 0, 0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="no window"):
        wan_windows.blend_weights([[0, 1]], 3)


@pytest.mark.parametrize("size", [9, 12])
def test_windows_covering_the_clip_in_one_piece_equal_the_unwindowed_edit(pipe, size):
    args = dict(video=tiny_clip(9, **SIZE), objects=[CIRCLE], num_inference_steps=3, guidance_scale=3.0,
                rad={"max_update_steps": 2, "step_size": 100.0}, irjs={"placement": "before_step"}, return_attention=True,
                output_type="pt")
    plain = pipe(PROMPT, generator=_gen(), **args)
    windowed = pipe(PROMPT, generator=_gen(), window={"size": size, "stride": 4}, **args)
    assert torch.equal(windowed.frames, plain.frames)
    assert torch.equal(windowed.attention_maps, plain.attention_maps)
    assert [r["loss"] for r in windowed.rad_losses] == [r["loss"] for r in plain.rad_losses]


@pytest.mark.parametrize("placement", ["after_step", "before_step"])
def test_several_windows_edit_each_window_and_keep_the_source_outside(pipe, placement):
    video = tiny_clip(17, **SIZE)  # 5 latent frames; windows of 9 frames (3 latent), stride 4 frames (1 latent)
    windows = [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    source = pipe.encode_video(video)
    emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    trajectory = pipe.invert(source, emb, 3, windows=windows)
    seen_frames, after_step, before_model = [], [], []

    def count(module, args, kwargs):
        seen_frames.append(kwargs["hidden_states"].shape[2])
        if not torch.is_grad_enabled():  # the denoising calls, not RAD's passes
            before_model.append(kwargs["hidden_states"].detach().float().clone())

    def keep(p, i, t, values):
        after_step.append(values["latents"].clone())
        return values

    handle = pipe.transformer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        out = pipe(PROMPT, video=video, objects=[CIRCLE], num_inference_steps=3, guidance_scale=3.0, generator=_gen(),
                   inversion_trajectory=trajectory, window={"size": 9, "stride": 4},
                   rad={"max_update_steps": 2, "step_size": 100.0}, irjs={"placement": placement, "source": "inversion"},
                   callback_on_step_end=keep, return_attention=True, output_type="latent")
    finally:
        handle.remove()
    latents = out.frames
    assert seen_frames and set(seen_frames) == {3}  # the transformer never sees more than one window
    assert torch.isfinite(latents).all() and latents.shape == source.shape
    assert out.attention_maps.shape == (1, 5, 2, 3) and torch.isfinite(out.attention_maps).all()
    # each window's own RAD, on its frames, at each RAD step
    assert [(r["step"], r["frames"]) for r in out.rad_losses] == [(s, [w[0], w[-1]]) for s in (0, 1) for w in windows]
    outside = torch.ones(1, 1, 5, 4, 6, dtype=torch.bool)
    outside[..., :4, :4] = False
    if placement == "after_step":
        for i, x in enumerate(after_step):  # after step i: the inverted source at step i + 1's level, all frames
            level = trajectory[3 - (i + 1)]
            assert torch.equal(x.masked_select(outside), level.masked_select(outside))
            assert not torch.equal(x, level)
        assert torch.equal(latents.masked_select(outside), source.masked_select(outside))
    else:  # every model input (a window, conditional and unconditional) holds the source's level outside
        calls_per_step = 2 * len(windows)  # CFG: two calls per window
        assert len(before_model) == 3 * calls_per_step
        for n, x in enumerate(before_model):
            step, window = n // calls_per_step, windows[(n % calls_per_step) // 2]
            level = trajectory[3 - step][:, :, window]
            window_outside = outside[:, :, window]
            assert torch.equal(x.masked_select(window_outside), level.masked_select(window_outside))


def test_windowed_inversion_runs_the_transformer_on_windows_only(pipe):
    source = pipe.encode_video(tiny_clip(17, **SIZE))
    emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"].shape[2]),
                                                        with_kwargs=True)
    try:
        trajectory = pipe.invert(source, emb, 3, windows=[[0, 1, 2], [2, 3, 4]])
    finally:
        handle.remove()
    assert set(seen) == {3} and len(seen) == 3 * 2
    assert trajectory.shape == (4, *source.shape) and torch.equal(trajectory[0], source)
    assert torch.isfinite(trajectory).all()
    whole = pipe.invert(source, emb, 3)
    assert not torch.equal(whole[-1], trajectory[-1])  # the windows' blend is not the one-pass velocity


def test_the_runner_edits_in_windows_and_reports_them(folder, tmp_path, capsys):
    edit_script = load_script("edit")
    write_frames(np.random.default_rng(0).integers(0, 255, size=(9, 32, 48, 3), dtype=np.uint8), tmp_path / "clip")
    cfg = {
        "model": {"pretrained": str(folder), "attention_cell_px": 16},
        "video": {"path": str(tmp_path / "clip"), "prompt": "a red circle on the sea", "n_frames": 9, **SIZE},
        "sampling": {"steps": 2, "guidance_scale": 3.0, "seed": 5, "start_in_regions": "noise"},
        "rad": {"max_update_steps": 1, "refinement_thresholds": {}},
        "window": {"size": 5, "stride": 4},
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "edits": [{"name": "square", "prompt": "a red square on the sea",
                   "objects": [{"word": "square", "box": [0, 0, 32, 32]}]}],
    }
    path = tmp_path / "windows.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert edit_script.main(["--config", str(path), "--overwrite", "--quiet"]) == 0, capsys.readouterr().err
    out = tmp_path / "out" / "square"
    report = json.loads((out / "report.json").read_text())
    assert report["latent_windows"] == [[0, 1], [1, 2]] and len(list((out / "frames").glob("*.png"))) == 9
    assert [r["frames"] for r in report["rad_losses"]] == [[0, 1], [1, 2]]
    cfg["window"] = {"size": None}  # the whole clip: its own inversion (another cache key)
    path.write_text(yaml.safe_dump(cfg))
    assert edit_script.main(["--config", str(path), "--overwrite", "--quiet"]) == 0
    assert len(list((tmp_path / "cache" / "inversion").glob("*.pt"))) == 2

