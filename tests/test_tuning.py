"""One-shot tuning on a tiny synthetic video: the loss falls, only trainable modules move,
results are written atomically and never overwritten silently."""

import json

import pytest
import torch

from reatco.errors import ConfigError
from reatco.backbones.tav import TuneAVideoUNet
from reatco.config import TuneConfig
from reatco.tuning import save_tuned, select_trainable, tune_unet

from tiny_models import save_tiny_sd, tiny_sd_components, tiny_unet2d

PROMPT = "a red circle on a gray background"
TRAINABLE = ("attn1.to_q", "attn2.to_q", "attn_temp")


def _video(f=3, size=16):
    """A disc moving right over a gradient, (F, 3, H, W) in [-1, 1]."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    frames = []
    for i in range(f):
        disc = ((x - (-0.5 + 0.4 * i)) ** 2 + y**2 < 0.15).float()
        frames.append(torch.stack([disc * 1.6 - 0.8, x * 0.3, y * 0.3 - disc * 0.5]))
    return torch.stack(frames).clamp(-1, 1)


def _is_trainable(name):
    module = name.rsplit(".", 1)[0]
    return any(module.endswith(p) or f".{p}." in module + "." for p in TRAINABLE)


@pytest.fixture(scope="module")
def tuned():
    components = tiny_sd_components()
    before = TuneAVideoUNet.from_unet2d(components["unet"]).state_dict()
    settings = TuneConfig(steps=20, learning_rate=1e-3, seed=0)
    result = tune_unet(components, _video(), PROMPT, settings, progress=False)
    return before, result


def test_twenty_steps_lower_the_loss(tuned):
    _, result = tuned
    losses = result.losses
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_only_trainable_modules_change(tuned):
    before, result = tuned
    after = result.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(_is_trainable(k) for k in changed), sorted(k for k in changed if not _is_trainable(k))
    assert any("attn_temp.to_out.0" in k for k in changed) and any("attn1.to_q" in k for k in changed)
    assert not any(p.requires_grad for p in result.unet.parameters())
    report = result.report
    assert report["losses"] == result.losses and report["seed"] == 0 and "diffusers" in report["versions"]


def test_tuning_is_seeded(tuned):
    _, result = tuned
    settings = TuneConfig(steps=2, learning_rate=1e-3, seed=0)
    again = tune_unet(tiny_sd_components(), _video(), PROMPT, settings, progress=False).losses
    assert again == result.losses[:2]


def test_tuning_an_inflated_unet_repeats_exactly_whatever_the_global_random_state(tmp_path):
    """The pipeline loads an image UNet already inflated (TuneAVideoUNet.from_pretrained); its
    temporal init must not come from whatever the global generator holds at load time."""
    tiny_unet2d().save_pretrained(tmp_path / "unet")
    settings = TuneConfig(steps=2, learning_rate=1e-3, seed=0)
    tuned = []
    for global_seed in (1, 2):
        components = tiny_sd_components()  # (seeds the global generator itself)
        torch.manual_seed(global_seed)
        components["unet"] = TuneAVideoUNet.from_pretrained(tmp_path / "unet")
        tuned.append(tune_unet(components, _video(), PROMPT, settings, progress=False).unet.state_dict())
    assert all(torch.equal(tuned[0][k], tuned[1][k]) for k in tuned[0])


def test_trainable_selection_by_suffix():
    unet = TuneAVideoUNet.from_unet2d(tiny_unet2d())
    names = select_trainable(unet, ["attn1.to_q", "attn_temp"])
    assert names and all(".attn1.to_q." in n or ".attn_temp." in n for n in names)
    assert not any(".attn2.to_q." in n for n in names)
    with pytest.raises(ConfigError, match=r"tune.trainable_modules: .*attn3"):
        select_trainable(unet, ["attn3.to_q"])


def test_save_is_atomic_and_refuses_to_overwrite(tmp_path):
    unet = TuneAVideoUNet.from_unet2d(tiny_unet2d())
    out = tmp_path / "tuned"
    save_tuned(unet, out, {"losses": [1.0]})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "diffusion_pytorch_model.bin", "tune_report.json"]
    assert not (tmp_path / "tuned.tmp").exists()
    with pytest.raises(ConfigError, match="tune.output_dir: .*already holds a tuned UNet.*overwrite"):
        save_tuned(unet, out, {"losses": [2.0]})
    assert json.loads((out / "tune_report.json").read_text())["losses"] == [1.0]
    save_tuned(unet, out, {"losses": [2.0]}, overwrite=True)
    assert json.loads((out / "tune_report.json").read_text())["losses"] == [2.0]
    loaded = TuneAVideoUNet.from_pretrained(out).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in unet.state_dict().items())


def _config(tmp_path, tune=None, video=None, model=None, **top):
    config = pytest.importorskip("reatco.config_files")
    try:
        return config.config_from_dict({
            "model": {"pretrained": str(tmp_path / "sd"), "attention_cell_px": 8, **(model or {})},
            "video": {"path": str(tmp_path / "video.mp4"), "prompt": PROMPT, "height": 16, "width": 16, "n_frames": 3, **(video or {})},
            "tune": {"steps": 1, "learning_rate": 1e-3, **(tune or {})},
            "output_dir": str(tmp_path / "out"),
            **top,
        }, check_paths=False)
    except ImportError as err:  # config validation needs reatco.video
        pytest.skip(f"config needs a module not present yet: {err}")


def test_tune_from_config_caches_by_key_and_reuses_only_an_exact_match(tmp_path):
    from reatco.tuning import tune_cache_key, tune_from_config

    save_tiny_sd(tmp_path / "sd")
    cfg = _config(tmp_path, cache_dir=str(tmp_path / "cache"))
    result = tune_from_config(cfg, video=_video(), progress=False)
    key, _ = tune_cache_key(cfg, _video())
    folder = tmp_path / "cache" / "tuned" / key
    assert result.folder == folder and not result.reused and len(result.losses) == 1
    assert {p.name for p in folder.iterdir()} == {"README.md", "config.json", "diffusion_pytorch_model.bin", "tune_config.yaml", "tune_report.json"}
    report = json.loads((folder / "tune_report.json").read_text())
    assert report["cache_key"] == key and report["cache_key_parts"]["settings"]["steps"] == 1
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "UNet3DConditionModel"
    # the same setup from another output folder: reused, not tuned again
    other = _config(tmp_path, cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "elsewhere"))
    again = tune_from_config(other, video=_video(), progress=False)
    assert again.reused and again.folder == folder and again.losses == []
    # a changed setting is another UNet in another folder
    changed = tune_from_config(_config(tmp_path, cache_dir=str(tmp_path / "cache"), tune={"steps": 2}), video=_video(), progress=False)
    assert not changed.reused and changed.folder != folder and len(changed.losses) == 2


def test_the_key_changes_with_everything_that_produced_the_unet(tmp_path):
    """Model, frames as read, frame selection, size, prompt, every tune setting, seed; not output_dir."""
    from reatco.tuning import tune_cache_key

    save_tiny_sd(tmp_path / "sd")
    save_tiny_sd(tmp_path / "sd2", seed=1)
    base = _config(tmp_path, cache_dir=str(tmp_path / "cache"))
    key, parts = tune_cache_key(base, _video())
    variants = {
        "steps": (_config(tmp_path, tune={"steps": 2}), _video()),
        "learning_rate": (_config(tmp_path, tune={"learning_rate": 2e-3}), _video()),
        "seed": (_config(tmp_path, tune={"seed": 1}), _video()),
        "trainable_modules": (_config(tmp_path, tune={"trainable_modules": ["attn1.to_q"]}), _video()),
        "batch_size": (_config(tmp_path, tune={"batch_size": 2}), _video()),
        "max_grad_norm": (_config(tmp_path, tune={"max_grad_norm": 0.5}), _video()),
        "prompt": (_config(tmp_path, video={"prompt": "a blue circle"}), _video()),
        "n_frames": (_config(tmp_path, video={"n_frames": 2}), _video(f=2)),
        "size": (_config(tmp_path, video={"height": 24, "width": 24}), _video(size=24)),
        "start_frame": (_config(tmp_path, video={"start_frame": 1}), _video()),
        "model": (_config(tmp_path, model={"pretrained": str(tmp_path / "sd2")}), _video()),
        "video content": (base, _video().flip(-1)),  # same file size and mtime would not tell
    }
    for name, (cfg, video) in variants.items():
        assert tune_cache_key(cfg, video)[0] != key, name
    same = _config(tmp_path, output_dir=str(tmp_path / "other"), cache_dir=str(tmp_path / "cache2"))
    assert tune_cache_key(same, _video())[0] == key
    # a same-size change to a weight file that keeps its mtime changes the model's part
    weights = next((tmp_path / "sd" / "unet").glob("diffusion_pytorch_model.*"))
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    import os

    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert tune_cache_key(base, _video())[1]["model"] != parts["model"]


def test_the_keys_settings_are_the_training_fields_they_always_were(tmp_path):
    """One definition of the tuning settings (TuneConfig, the config's section): the key's inputs
    are the nine training fields the former TuneSettings held, with the config's values, so a
    UNet cached before is found again; whether and where to tune are not part of it."""
    from reatco.tuning import tune_cache_key, tune_key_parts

    save_tiny_sd(tmp_path / "sd")
    cfg = _config(tmp_path, cache_dir=str(tmp_path / "cache"))
    parts = tune_key_parts(cfg, _video())
    former = ("steps", "learning_rate", "trainable_modules", "seed", "mixed_precision", "gradient_checkpointing",
              "batch_size", "adam_weight_decay", "max_grad_norm")
    t = cfg.tune
    assert parts["settings"] == {name: getattr(t, name) for name in former}
    assert parts["settings"]["trainable_modules"] == ["attn1.to_q", "attn2.to_q", "attn_temp"]
    key = tune_cache_key(cfg, _video())[0]
    for change in ({"enabled": True}, {"overwrite": True}, {"output_dir": str(tmp_path / "mine")}):
        assert tune_cache_key(_config(tmp_path, tune=change, cache_dir=str(tmp_path / "cache")), _video())[0] == key, change


def test_tune_unet_checks_its_settings_as_the_config_does():
    with pytest.raises(ConfigError, match=r"tune.steps: must be ≥ 1"):
        tune_unet(tiny_sd_components(), _video(), PROMPT, {"steps": 0}, progress=False)
    with pytest.raises(ConfigError, match=r"tune.stepz"):
        tune_unet(tiny_sd_components(), _video(), PROMPT, {"stepz": 2}, progress=False)


def test_a_given_output_dir_of_another_setup_is_refused(tmp_path):
    from reatco.tuning import tune_from_config

    save_tiny_sd(tmp_path / "sd")
    out = str(tmp_path / "mine")
    tune_from_config(_config(tmp_path, tune={"output_dir": out}), video=_video(), progress=False)
    assert tune_from_config(_config(tmp_path, tune={"output_dir": out}), video=_video(), progress=False).reused
    with pytest.raises(ConfigError, match="tune.output_dir: .*another setup.*overwrite"):
        tune_from_config(_config(tmp_path, tune={"output_dir": out, "learning_rate": 2e-3}), video=_video(), progress=False)
    redone = tune_from_config(_config(tmp_path, tune={"output_dir": out, "learning_rate": 2e-3, "overwrite": True}),
                              video=_video(), progress=False)
    assert not redone.reused and json.loads((tmp_path / "mine" / "tune_report.json").read_text())["settings"]["learning_rate"] == 2e-3


def test_a_damaged_cached_unet_is_reported_and_tuned_again(tmp_path, caplog):
    from reatco.tuning import tune_from_config

    save_tiny_sd(tmp_path / "sd")
    cfg = _config(tmp_path, cache_dir=str(tmp_path / "cache"))
    folder = tune_from_config(cfg, video=_video(), progress=False).folder
    weights = folder / "diffusion_pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk or a killed copy
    with caplog.at_level("WARNING"):
        again = tune_from_config(cfg, video=_video(), progress=False)
    assert not again.reused and len(again.losses) == 1
    assert str(folder) in caplog.text and "damaged" in caplog.text
    TuneAVideoUNet.from_pretrained(folder)  # whole again


def test_a_diverging_tuning_raises_and_saves_nothing(tmp_path):
    from reatco.errors import NonFiniteError
    from reatco.tuning import tune_from_config

    save_tiny_sd(tmp_path / "sd")
    cfg = _config(tmp_path, cache_dir=str(tmp_path / "cache"), tune={"learning_rate": 1e30, "steps": 3})
    with pytest.raises(NonFiniteError, match="tun"):
        tune_from_config(cfg, video=_video(), progress=False)
    assert not list((tmp_path / "cache" / "tuned").glob("*/config.json"))


def test_tune_script_exits_2_on_a_bad_config(tmp_path, capsys):
    pytest.importorskip("reatco.config")
    pytest.importorskip("reatco.video")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tune_script", Path(__file__).parent.parent / "reatco" / "commands" / "tune.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "bad.yaml").write_text("model:\n  pretrained: x\ntune:\n  stepz: 3\n")
    assert script.main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "tune.stepz" in capsys.readouterr().err


def test_frame_by_frame_encoding_gives_the_batched_posterior():
    from reatco.tuning import encode_frame_by_frame

    vae = tiny_sd_components()["vae"].eval()
    video = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(video).latent_dist
        frames = encode_frame_by_frame(vae, video)
    torch.testing.assert_close(frames.mean, whole.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(frames.std, whole.std, rtol=1e-5, atol=1e-6)
