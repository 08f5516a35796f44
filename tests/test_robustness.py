"""Bad input, damaged files, NaN and inf, concurrent writers: each stops early with a clear error
(naming the field), is recomputed, or is refused — and nothing finished is changed."""

import json
import logging
import os
import stat
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from reatco.config_files import config_from_dict, load_config
from reatco.errors import ConfigError, NonFiniteError
from reatco.files import atomic_file, file_lock, lock_path, new_partial_dir, replace_dir, write_json_atomic

from tiny_models import save_tiny_sd, tiny_sd_components

SIZE, N_FRAMES = 32, 3


def _cfg(tmp_path, overrides=(), **changes):
    d = {
        "model": {"pretrained": "some/model", "attention_cell_px": 8},
        "video": {"path": str(tmp_path), "prompt": "a cat", "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "output_dir": str(tmp_path / "out"),
        "edits": [{"name": "e", "prompt": "a dog", "objects": [{"word": "dog", "box": [0, 0, 16, 16]}]}],
    }
    for key, value in changes.items():
        node = d
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return config_from_dict(d, overrides)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("key, value", [
    ("sampling.guidance_scale", float("inf")), ("sampling.guidance_scale", float("nan")),
    ("rad.step_size", float("inf")), ("tune.learning_rate", float("inf")), ("rad.temperature", float("nan")),
    ("inversion.guidance_scale", float("inf")), ("tune.max_grad_norm", float("nan")),
    ("rad.step_size_range", [1.0, float("inf")]),
])
def test_non_finite_settings_are_rejected_naming_the_field(tmp_path, key, value):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, **{key: value})
    assert err.value.field.startswith(key) and "finite" in err.value.message


def test_non_finite_in_an_override_and_in_an_edit_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"^sampling.guidance_scale: must be a finite"):
        _cfg(tmp_path, ["sampling.guidance_scale=inf"])
    with pytest.raises(ConfigError, match=r"^edits\[0\].objects\[0\].box\[2\]: must be a finite"):
        _cfg(tmp_path, ["edits.0.objects.0.box=[0, 0, .inf, 16]"])
    with pytest.raises(ConfigError, match=r"^edits\[0\].rad.step_size: must be a finite"):
        _cfg(tmp_path, ["edits.0.rad={step_size: .nan}"])


@pytest.mark.parametrize("override, field", [
    ("sampling.seed=9223372036854775808", "sampling.seed"),
    ("tune.seed=99999999999999999999", "tune.seed"),
    ("sampling.seed=[1,", "sampling.seed"),
    ("rad.refinement_thresholds={0: 0.5", "rad.refinement_thresholds"),
    ("model.attention_cell_px=12", "model.attention_cell_px"),
    ("model.attention_cell_px=0", "model.attention_cell_px"),
    ("rad.max_update_steps=-1", "rad.max_update_steps"),
    ("rad.temperature=0", "rad.temperature"),
])
def test_bad_overrides_name_their_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, [override])
    assert err.value.field == field, str(err.value)


def test_seed_at_the_int64_limit_is_fine(tmp_path):
    assert _cfg(tmp_path, ["sampling.seed=9223372036854775807"]).sampling.seed == 2**63 - 1
    torch.Generator().manual_seed(2**63 - 1)


def test_output_and_cache_folders_that_cannot_be_made_are_rejected(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="^output_dir: .* is a file"):
        _cfg(tmp_path, output_dir=str(tmp_path / "afile"))
    with pytest.raises(ConfigError, match="^output_dir: .*cannot be created"):
        _cfg(tmp_path, output_dir=str(tmp_path / "afile" / "sub"))
    with pytest.raises(ConfigError, match="^cache_dir: "):
        _cfg(tmp_path, cache_dir=str(tmp_path / "afile"))
    assert (tmp_path / "afile").read_text() == "x"


def test_interpolation_is_refused_so_no_secret_reaches_the_saved_config(tmp_path, monkeypatch):
    monkeypatch.setenv("REATCO_TEST_TOKEN", "secret-token")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{pretrained: x, attention_cell_px: 8}}\nvideo: {{path: {tmp_path}, prompt: '${{oc.env:REATCO_TEST_TOKEN}}', "
                      f"height: 32, width: 32, n_frames: 3}}\noutput_dir: {tmp_path / 'out'}\n")
    with pytest.raises(ConfigError, match=r"^video.prompt: .*interpolation is not supported"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"^video.prompt: "):
        _cfg(tmp_path, ["video.prompt=${oc.env:REATCO_TEST_TOKEN}"])


# ----------------------------------------------------------------------------- files


def test_atomic_writes_and_result_folders_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "a.json") as tmp, open(tmp, "w") as f:
            f.write("{}")
        folder = new_partial_dir(tmp_path / "result")
        (folder / "x").write_text("1")
        replace_dir(folder, tmp_path / "result")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "result").stat().st_mode) == 0o750


def test_atomic_file_leaves_the_old_file_on_an_interrupt(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path) as tmp, open(tmp, "w") as f:
            f.write("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_a_json_that_cannot_be_written_leaves_the_old_file(tmp_path):
    """write_json_atomic serialises before it replaces: NaN refused (allow_nan=False) keeps the old file."""
    path = tmp_path / "scores.json"
    write_json_atomic(path, {"b": 1, "a": 2}, sort_keys=True)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")}, allow_nan=False)
    assert json.loads(path.read_text()) == {"a": 2, "b": 1} and os.listdir(tmp_path) == ["scores.json"]


def test_concurrent_writers_of_one_result_each_leave_it_complete(tmp_path):
    final = tmp_path / "edit"
    errors = []

    def writer(k):
        try:
            for _ in range(20):
                folder = new_partial_dir(final)
                for name in ("edited.mp4", "report.json"):
                    (folder / name).write_text(str(k))
                replace_dir(folder, final)
                with file_lock(lock_path(final)):  # between replacements (a reader holding the old folder open sees it removed)
                    assert sorted(os.listdir(final)) == ["edited.mp4", "report.json"]
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(os.listdir(final)) == ["edited.mp4", "report.json"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["edit"]  # no partial or old left


# ----------------------------------------------------------------------------- video and masks


def test_a_frame_folder_mixing_sizes_is_an_error(tmp_path):
    from reatco.video import read_video

    for i, size in enumerate([(32, 32), (32, 32), (48, 32)]):
        Image.new("RGB", size).save(tmp_path / f"{i:05d}.png")
    with pytest.raises(ConfigError, match=r"^video.path: .*differ in size: 00000.png is 32×32 but 00002.png is 48×32"):
        read_video(tmp_path, 32, 32, 3)


def test_a_mask_of_another_aspect_ratio_is_reported(tmp_path, caplog):
    from reatco.regions.parsing import parse_region
    from reatco.regions.settings import object_settings

    Image.new("L", (64, 32), 255).save(tmp_path / "wide.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "square.png")
    with caplog.at_level(logging.WARNING):
        parse_region(object_settings({"word": "x", "mask": str(tmp_path / "square.png")}), 2, 32, 32, 8, field="edits[0].objects[0]")
        assert "aspect" not in caplog.text
        parse_region(object_settings({"word": "x", "mask": str(tmp_path / "wide.png")}), 2, 32, 32, 8, field="edits[0].objects[0]")
    assert "edits[0].objects[0]" in caplog.text and "wide.png is 64×32, another aspect ratio" in caplog.text


# ----------------------------------------------------------------------------- caches


def test_a_damaged_inversion_cache_is_reported_and_recomputed(tmp_path, caplog):
    from reatco.backbones.inversion import load_or_invert

    calls = []

    def invert():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    first = load_or_invert(tmp_path, "k", invert)
    path = tmp_path / "k.pt"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        again = load_or_invert(tmp_path, "k", invert)
    assert torch.equal(first, again) and len(calls) == 2
    assert str(path) in caplog.text and "damaged" in caplog.text
    assert torch.equal(load_or_invert(tmp_path, "k", invert), first) and len(calls) == 2  # whole again
    with pytest.raises(NonFiniteError):
        load_or_invert(tmp_path, "nan", lambda: torch.tensor([float("nan")]))
    assert not (tmp_path / "nan.pt").exists()


def test_a_truncated_user_unet_is_a_clear_error(tmp_path):
    from reatco.backbones.tav import TuneAVideoUNet
    from reatco.tuning import load_tuned

    from tiny_models import tiny_unet2d

    folder = tmp_path / "tuned"
    TuneAVideoUNet.from_unet2d(tiny_unet2d()).save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=rf"^model.tuned_unet: cannot load the UNet in {folder}: .*diffusion_pytorch_model.bin is damaged or truncated"):
        load_tuned(folder)


def test_the_inversion_key_follows_the_frames_not_their_size_and_mtime(tmp_path):
    """`cp -p`, rsync and tar keep size and mtime while the content changes."""
    from reatco.runner import EditRunner

    save_tiny_sd(tmp_path / "model")
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)

    def write(seed_shift):
        for i in range(N_FRAMES):
            pixels = np.roll(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), seed_shift, axis=1)
            Image.fromarray(pixels).save(frames / f"{i:05d}.png", compress_level=0)  # size depends on dims only

    write(0)
    cfg = _cfg(tmp_path, **{"model.pretrained": str(tmp_path / "model"), "video.path": str(frames), "tune.enabled": False,
                            "cache_dir": str(tmp_path / "cache")})
    key = EditRunner(cfg).inversion_key()
    stats = {p: p.stat() for p in frames.iterdir()}
    write(5)
    for p, st in stats.items():
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    assert EditRunner(cfg).inversion_key() != key
    assert EditRunner(cfg).inversion_key() == EditRunner(cfg).inversion_key()


# ----------------------------------------------------------------------------- the pipeline from Python


@pytest.fixture(scope="module")
def pipe():
    from reatco.pipeline import ReAtCoPipeline

    pipe = ReAtCoPipeline(**tiny_sd_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _video():
    return torch.rand(N_FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _call(pipe, **kwargs):
    args = dict(prompt="a cat and a dog", video=_video(), objects=[{"word": "cat", "box": [0, 0, 16, 16]}],
                num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(1), attention_cell_px=4,
                output_type="latent", rad={"max_update_steps": 2, "refinement_thresholds": {}})
    args.update(kwargs)
    return pipe(**args)


@pytest.mark.parametrize("kwargs, match", [
    ({"video": (_video() + 1) / 2}, r"\[0, 1\]"),
    ({"video": ((_video() + 1) * 127.5).round().to(torch.uint8)}, "uint8"),
    ({"video": (_video() + 1) * 127.5}, r"\[-1, 1\]"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"guidance_scale": 0}, "guidance_scale"),
    ({"attention_cell_px": 0}, "attention_cell_px"),
    ({"rad": {"max_update_steps": -1}}, "rad.max_update_steps"),
    ({"rad": {"temperature": 0}}, "rad.temperature"),
    ({"rad": {"step_size": float("inf")}}, "rad.step_size"),
    ({"attention_cell_px": 6}, "attention_cell_px"),
    ({"prompt": "a cat " + "and a dog " * 30, "rad": {"normalize_eot": True}}, "prompt"),
])
def test_bad_python_arguments_raise_before_any_work(pipe, monkeypatch, kwargs, match):
    if "attention_cell_px" not in match or kwargs.get("attention_cell_px") == 0:
        monkeypatch.setattr(pipe, "encode_video", lambda *a, **k: pytest.fail("worked before checking"))
    with pytest.raises(ValueError, match=match):
        _call(pipe, **kwargs)


def test_a_rad_update_that_overflows_stops_with_a_named_error(pipe):
    with pytest.raises(NonFiniteError, match="non-finite"):
        _call(pipe, rad={"max_update_steps": 3, "refinement_thresholds": {}, "step_size": 1e38})


def test_rad_records_attention_in_float32_under_fp16(pipe):
    """fp16 probabilities underflow to 0 and the RAD gradient w.r.t. them overflows (NaN)."""
    from reatco.backbones.tav.recording import record_cross_attention
    from reatco.rad.attention_maps import AttentionStore
    from reatco.backbones.tav import rad_attention_layers

    half = type(pipe)(**tiny_sd_components()).to(dtype=torch.float16)
    store = AttentionStore(grid=(SIZE // 4, SIZE // 4), stop_early=False)
    layers = rad_attention_layers(half.unet, half.vae_scale_factor, 4)
    x = torch.randn(1, 4, N_FRAMES, SIZE // 2, SIZE // 2, dtype=torch.float16)
    with record_cross_attention(half.unet, layers, store), torch.no_grad(), store.recording("record"):
        half.unet(x, torch.tensor(500), encoder_hidden_states=half.encode_prompt("a cat"))
    assert store.maps().dtype == torch.float32


def test_fp16_rad_edit_of_the_shapes_model_is_finite():
    """The shipped model in float16 with RAD gave NaN frames: the recorded attention and the RAD
    loss's gradient overflowed. Its settings (share normalisation, step 50) are the demo's."""
    from pathlib import Path

    from reatco.pipeline import ReAtCoPipeline
    from reatco.video import read_video

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / "shapes.yaml", check_paths=False)
    pipe = ReAtCoPipeline.from_pretrained(root / "data" / "shapes-model", torch_dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    video = read_video(cfg.video.path, 64, 64, 4)
    edit = cfg.edits[0]
    rad = {**{k: getattr(cfg.rad, k) for k in ("normalize_eot", "token_normalization", "step_size", "top_k_ratio")},
           "max_update_steps": 2, "refinement_thresholds": {}}
    out = pipe(prompt=edit.prompt, video=video, objects=[{"word": o.word, "box": [8, 8, 40, 40]} for o in edit.objects[:1]],
               num_inference_steps=3, guidance_scale=10.0, generator=torch.Generator().manual_seed(7), attention_cell_px=8,
               rad=rad, irjs={"enabled": False})
    assert np.isfinite(out.frames).all() and out.frames.shape == (1, 4, 64, 64, 3)
    assert len(out.rad_losses) == 2 and all(np.isfinite(r["loss"]) for r in out.rad_losses)
