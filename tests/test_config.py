"""Configs: schema defaults, inheritance, overrides, unknown keys, validation errors, round trips."""

import copy
import dataclasses
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from reatco.config import EditConfig, RADConfig, ReAtCoConfig, WindowConfig, edit_config, section_settings
from reatco.config_files import config_from_dict, load_config, save_config
from reatco.schema import config_to_dict
from reatco.errors import ConfigError

from paper_clips import CLIPS

REPO = Path(__file__).resolve().parent.parent

EDIT = {
    "name": "cat-dog",
    "prompt": "A cat and a dog are playing.",
    "objects": [
        {"word": "cat", "box": [32, 32, 128, 128]},
        {"word": "dog", "boxes": {0: [200, 32, 300, 128], 7: [250, 32, 350, 128]}},
    ],
}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    return path


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"")  # validation only checks that the file exists
    return path


@pytest.fixture
def cfg_dict(clip):
    return {"video": {"path": str(clip), "prompt": "A cat and a dog."}, "edits": [copy.deepcopy(EDIT)]}


def error_of(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return err.value


def test_defaults_are_the_papers(cfg_dict):
    cfg = config_from_dict(cfg_dict)
    assert cfg.model.pretrained == "CompVis/stable-diffusion-v1-4" and cfg.model.attention_cell_px == 32
    assert (cfg.video.height, cfg.video.width, cfg.video.n_frames) == (512, 512, 8)
    assert (cfg.sampling.steps, cfg.sampling.guidance_scale, cfg.sampling.seed) == (50, 12.5, 33)
    assert cfg.tune.trainable_modules == ["attn1.to_q", "attn2.to_q", "attn_temp"] and cfg.tune.learning_rate == 3e-5
    assert cfg.rad.refinement_thresholds == {0: 0.05, 10: 0.5, 20: 0.8}
    assert (cfg.rad.max_update_steps, cfg.rad.step_size, cfg.rad.top_k_ratio) == (25, 20.0, 0.2)
    assert (cfg.irjs.placement, cfg.irjs.source, cfg.window.size) == ("before_step", "noise", None)
    # the paper's start and plain decoding; the shapes demo opts into both departures
    assert (cfg.sampling.start_in_regions, cfg.irjs.decode_statistics) == ("inversion", "edit")
    assert cfg.output_dir == os.path.join("outputs", "reatco")
    assert cfg.edits[0].objects[1].boxes == {0: [200, 32, 300, 128], 7: [250, 32, 350, 128]}


def test_base_yaml_writes_out_every_default():
    written = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "base.yaml"))
    assert written == config_to_dict(ReAtCoConfig())


def test_inheritance_is_recursive_and_paths_follow_their_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clip.mp4").write_bytes(b"")
    write_yaml(tmp_path / "root.yaml", {"sampling": {"steps": 40, "seed": 1}, "rad": {"top_k_ratio": 0.3}})
    write_yaml(tmp_path / "shared" / "base.yaml", {
        "base_config": "../root.yaml",
        "video": {"path": "../data/clip.mp4", "prompt": "two cats", "n_frames": 4},
        "sampling": {"seed": 2},
        "rad": {"refinement_thresholds": {0: 0.1, 5: 0.2}},
        "edits": [EDIT],
    })
    child = write_yaml(tmp_path / "videos" / "child.yaml", {
        "base_config": "../shared/base.yaml",
        "sampling": {"seed": 3},
        "rad": {"refinement_thresholds": {1: 0.9}},
        "edits": [{**EDIT, "name": "only-child"}],
    })
    cfg = load_config(child)
    assert cfg.video.path == str(tmp_path / "data" / "clip.mp4")  # relative to base.yaml, not child.yaml
    assert (cfg.sampling.steps, cfg.sampling.seed, cfg.rad.top_k_ratio, cfg.video.n_frames) == (40, 3, 0.3, 4)
    assert cfg.rad.refinement_thresholds == {1: 0.9}  # a threshold table is replaced, not merged
    assert [e.name for e in cfg.edits] == ["only-child"]  # lists are replaced
    assert cfg.output_dir == os.path.join("outputs", "child")


def test_inheritance_cycle_is_an_error(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base_config": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"base_config": "a.yaml"})
    err = error_of(load_config, tmp_path / "a.yaml")
    assert err.field == "base_config" and "cycle" in err.message


def test_missing_base_and_missing_file(tmp_path):
    child = write_yaml(tmp_path / "c.yaml", {"base_config": "nope.yaml"})
    err = error_of(load_config, child)
    assert err.field == "base_config" and "nope.yaml" in err.message
    assert "does not exist" in error_of(load_config, tmp_path / "absent.yaml").message


def test_local_model_folders_resolve_and_hub_ids_stay(tmp_path, clip):
    (tmp_path / "weights" / "sd").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    data = {
        "model": {"pretrained": "weights/sd", "tuned_unet": None},
        "video": {"path": "clip.mp4", "prompt": "x"},
        "edits": [{"name": "m", "prompt": "a cat", "objects": [{"word": "cat", "mask": "masks/cat.png"}]}],
    }
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    assert cfg.model.pretrained == str(tmp_path / "weights" / "sd")
    assert cfg.video.path == str(clip)
    assert cfg.edits[0].objects[0].mask == str(tmp_path / "masks" / "cat.png")
    data["model"]["pretrained"] = "someone/some-model"
    assert load_config(write_yaml(tmp_path / "c.yaml", data)).model.pretrained == "someone/some-model"


def test_overrides(cfg_dict):
    cfg = config_from_dict(cfg_dict, [
        "sampling.seed=7",
        "edits.0.prompt=A cat: the one on the left",
        "edits[0].objects.0.box=[0, 0, 64, 64]",
        "edits.0.irjs.enabled=false",
        "rad.refinement_thresholds={3: 0.4}",
        "model.tuned_unet=",
        "window.size=4",
    ], check_paths=False)
    assert cfg.sampling.seed == 7 and isinstance(cfg.sampling.seed, int)
    assert cfg.edits[0].prompt == "A cat: the one on the left"
    assert cfg.edits[0].objects[0].box == [0, 0, 64, 64]
    assert cfg.edits[0].irjs == {"enabled": False}
    assert cfg.rad.refinement_thresholds == {3: 0.4}
    assert cfg.model.tuned_unet is None and cfg.window.size == 4


def test_section_override_keeps_the_sections_other_values(cfg_dict):
    cfg_dict["sampling"] = {"guidance_scale": 5.5}
    cfg = config_from_dict(cfg_dict, ["sampling={seed: 4}"])
    assert (cfg.sampling.seed, cfg.sampling.guidance_scale) == (4, 5.5)


def test_malformed_override(cfg_dict):
    assert "key=value" in error_of(config_from_dict, cfg_dict, ["sampling.seed"]).message
    assert error_of(config_from_dict, cfg_dict, ["edits.3.prompt=x"]).field == "edits[3]"


def test_config_from_dict_with_a_base(tmp_path, clip):
    write_yaml(tmp_path / "base.yaml", {"video": {"path": "clip.mp4", "prompt": "x"}, "sampling": {"seed": 9}})
    cfg = config_from_dict({"base_config": "base.yaml", "sampling": {"steps": 30}}, base_dir=tmp_path, name="nb")
    assert (cfg.video.path, cfg.sampling.seed, cfg.sampling.steps) == (str(clip), 9, 30)
    assert cfg.output_dir == os.path.join("outputs", "nb")
    assert error_of(config_from_dict, {"base_config": "base.yaml"}).field == "base_config"


@pytest.mark.parametrize("override,field,suggestion", [
    ("sampling.sed=3", "sampling.sed", "sampling.seed"),
    ("vidoe.path=x", "vidoe", "video"),
    ("edits.0.objects.0.bxo=[1,2,3,4]", "edits[0].objects[0].bxo", "edits[0].objects[0].box"),
    ("edits.0.rad.top_k=0.5", "edits[0].rad.top_k", "edits[0].rad.top_k_ratio"),
])
def test_unknown_keys_get_a_suggestion(cfg_dict, override, field, suggestion):
    err = error_of(config_from_dict, cfg_dict, [override])
    assert err.field == field and f"did you mean '{suggestion}'" in err.message


def test_unknown_key_in_a_file_is_rejected(tmp_path, cfg_dict):
    cfg_dict["irjs"] = {"placment": "after_step"}
    err = error_of(load_config, write_yaml(tmp_path / "c.yaml", cfg_dict))
    assert err.field == "irjs.placment" and "irjs.placement" in err.message


@pytest.mark.parametrize("override,field", [
    ("sampling.steps=many", "sampling.steps"),
    ("rad.smoothing=maybe", "rad.smoothing"),
    ("edits.0.objects.0.box=oops", "edits[0].objects[0].box"),
    ("edits.0.irjs.feather=wide", "edits[0].irjs.feather"),
])
def test_wrong_types_name_the_field(cfg_dict, override, field):
    assert error_of(config_from_dict, cfg_dict, [override]).field == field


@pytest.mark.parametrize("override,field,words", [
    ("sampling.steps=0", "sampling.steps", "≥ 1"),
    ("tune.steps=-5", "tune.steps", "≥ 1"),
    ("inversion.steps=20", "inversion.steps", "sampling.steps"),
    ("rad.top_k_ratio=0", "rad.top_k_ratio", "(0, 1]"),
    ("rad.top_k_ratio=1.5", "rad.top_k_ratio", "(0, 1]"),
    ("rad.smoothing_kernel=4", "rad.smoothing_kernel", "odd"),
    ("rad.refinement_thresholds={50: 0.5}", "rad.refinement_thresholds.50", "[0, 50)"),
    ("rad.refinement=mean", "rad.refinement", "official, full, max_inner"),
    ("rad.top_k_rounding=ceil", "rad.top_k_rounding", "truncate, round"),
    ("rad.box_grid=area", "rad.box_grid", "round, coverage"),
    ("rad.calibration_frames=0", "rad.calibration_frames", "≥ 1"),
    ("irjs.noise=per_frame", "irjs.noise", "per_window, per_step"),
    ("rad.token_normalization=sum", "rad.token_normalization", "softmax, share"),
    ("rad.word_tokens=max", "rad.word_tokens", "mean, sum"),
    ("irjs.placement=after", "irjs.placement", "before_step, after_step"),
    ("irjs.source=random", "irjs.source", "noise, inversion"),
    ("window.size=0", "window.size", "≥ 1"),
    (["window.size=4", "window.stride=5"], "window.stride", "window.size"),
    ("window.size=4", None, None),
    ("model.dtype=half", "model.dtype", "float16"),
    ("model.device=gpu", "model.device", "cuda"),
    ("video.height=500", "video.height", "496 or 504"),
    ("video.width=520", "video.width", "512 or 544"),
    ("video.n_frames=0", "video.n_frames", "≥ 1"),
    ("video.frame_stride=0", "video.frame_stride", "≥ 1"),
    (["video.prompt=", "tune.enabled=true"], "video.prompt", "describe"),  # tuning needs the prompt
    ("tune.mixed_precision=fp8", "tune.mixed_precision", "bf16"),
    ("sampling.guidance_scale=0.5", "sampling.guidance_scale", "no guidance"),
    ("sampling.start_in_regions=random", "sampling.start_in_regions", "inversion, noise"),
    ("edits.0.sampling.start_in_regions=x", "edits[0].sampling.start_in_regions", "inversion, noise"),
    ("edits.0.name=../escape", "edits[0].name", "safe folder name"),
    ("edits.0.prompt=", "edits[0].prompt", "edited prompt"),
    ("edits.0.objects.0.word=", "edits[0].objects[0].word", "word"),
    ("edits.0.objects.0.occurrence=0", "edits[0].objects[0].occurrence", "≥ 1"),
    ("edits.0.objects.0.mask=cat.png", "edits[0].objects[0]", "exactly one of box, boxes, mask, boxes_file or source"),
    ("edits.0.objects.0.box=null", "edits[0].objects[0]", "got none"),
    ("edits.0.objects=[]", "edits[0].objects", "irjs.enabled=false"),
    ("edits.0.sampling.steps=30", "edits[0].sampling.steps", "inversion steps"),
    ("edits.0.rad.top_k_ratio=2", "edits[0].rad.top_k_ratio", "(0, 1]"),
    ("edits.0.irjs.source=x", "edits[0].irjs.source", "noise, inversion"),
    ("irjs.decode_statistics=frame", "irjs.decode_statistics", "edit, source"),
    ("irjs.decode_outside=pixels", "irjs.decode_outside", "edit, source, source_frames"),
    ("model.autocast=fp8", "model.autocast", "none, bf16"),
])
def test_each_validation_error_names_its_field(cfg_dict, override, field, words):
    overrides = override if isinstance(override, list) else [override]
    if field is None:  # a valid value passes
        config_from_dict(cfg_dict, overrides)
        return
    err = error_of(config_from_dict, cfg_dict, overrides)
    assert err.field == field and words in err.message, str(err)


# Section settings given from Python (pipe(rad=…, irjs=…, window=…)): the YAML path's checks and errors.
SECTION_CASES = [
    ("rad", {"refinement_thresholds": {50: 0.5}}),
    ("rad", {"refinement_thresholds": {"x": 0.5}}),
    ("rad", {"refinement_thresholds": {0: 1.5}}),
    ("rad", {"refinement": "mean"}),
    ("rad", {"top_k_ratio": 0}),
    ("rad", {"step_size": "big"}),
    ("rad", {"smoothing_kernel": 4}),
    ("rad", {"calibration_frames": 0}),
    ("rad", {"refinment": "full"}),
    ("irjs", {"placement": "after"}),
    ("irjs", {"noise": "per_frame"}),
    ("window", {"size": 4, "stride": 5}),
    ("window", {"size": 0}),
]


@pytest.mark.parametrize("section,values", SECTION_CASES)
def test_sections_from_python_fail_like_yaml(cfg_dict, section, values):
    cfg_dict[section] = values
    from_yaml = error_of(config_from_dict, cfg_dict)
    from_python = error_of(section_settings, section, values, 50)
    assert (from_python.field, from_python.message) == (from_yaml.field, from_yaml.message)


def test_string_step_keys_become_step_indices_in_yaml_and_python(cfg_dict, tmp_path):
    cfg_dict["rad"] = {"refinement_thresholds": {"0": 0.9, "12": 0.5}}
    assert config_from_dict(cfg_dict).rad.refinement_thresholds == {0: 0.9, 12: 0.5}
    path = tmp_path / "c.yaml"
    path.write_text(f"video: {{path: {cfg_dict['video']['path']}, prompt: a cat}}\nrad:\n  refinement_thresholds: {{'0': 0.9}}\n")
    assert load_config(path).rad.refinement_thresholds == {0: 0.9}
    assert section_settings("rad", {"refinement_thresholds": {"0": 0.9}}, 50).refinement_thresholds == {0: 0.9}
    # a dataclass built by hand with JSON's keys goes through the same conversion
    assert section_settings("rad", RADConfig(refinement_thresholds={"3": 0.5}), 50).refinement_thresholds == {3: 0.5}
    assert section_settings("window", WindowConfig(size=4)).size == 4
    assert section_settings("rad", None, 50) == RADConfig()
    err = error_of(section_settings, "window", WindowConfig(size=2, stride=3))
    assert err.field == "window.stride"
    err = error_of(section_settings, "rad", [1, 2], 50)
    assert err.field == "rad" and "mapping" in err.message


def test_edit_names_must_be_unique(cfg_dict):
    cfg_dict["edits"].append(copy.deepcopy(EDIT))
    err = error_of(config_from_dict, cfg_dict)
    assert err.field == "edits[1].name" and "unique" in err.message


def test_video_path_must_exist_unless_paths_are_not_checked(cfg_dict, tmp_path):
    cfg_dict["video"]["path"] = str(tmp_path / "missing.mp4")
    assert error_of(config_from_dict, cfg_dict).field == "video.path"
    assert config_from_dict(cfg_dict, check_paths=False).video.path.endswith("missing.mp4")
    del cfg_dict["video"]["path"]
    err = error_of(config_from_dict, cfg_dict, check_paths=False)
    assert err.field == "video.path" and "required" in err.message


def test_prompt_may_be_empty_when_no_tuning(cfg_dict):
    cfg = config_from_dict(cfg_dict, ["video.prompt="])  # no tuning by default
    assert cfg.video.prompt == ""


def test_edit_config_merges_overrides_without_mutating(cfg_dict):
    cfg_dict["edits"].append({**copy.deepcopy(EDIT), "name": "bg", "irjs": {"enabled": False},
                              "rad": {"refinement_thresholds": {2: 0.3}, "step_size": 5}})
    cfg = config_from_dict(cfg_dict)
    before = copy.deepcopy(cfg)
    merged = edit_config(cfg, cfg.edits[1])
    assert cfg == before
    assert merged.irjs.enabled is False and merged.irjs.placement == "before_step"
    assert merged.rad.step_size == 5.0 and merged.rad.refinement_thresholds == {2: 0.3}
    assert merged.rad.top_k_ratio == cfg.rad.top_k_ratio
    assert [e.name for e in merged.edits] == ["bg"]
    plain = edit_config(cfg, cfg.edits[0])
    assert plain.rad == cfg.rad and plain.irjs == cfg.irjs and plain.edits == [cfg.edits[0]]


def test_edit_config_rejects_bad_partial_overrides(cfg_dict):
    cfg = config_from_dict(cfg_dict)
    edit = EditConfig(name="x", prompt="a cat", objects=cfg.edits[0].objects, irjs={"placment": "after_step"})
    err = error_of(edit_config, cfg, edit)
    assert err.field == "edit 'x'.irjs.placment" and "placement" in err.message


def test_save_load_round_trip_is_equal(cfg_dict, tmp_path):
    cfg_dict["edits"].append({**copy.deepcopy(EDIT), "name": "bg", "irjs": {"enabled": False}})
    cfg = config_from_dict(cfg_dict, ["sampling.seed=5", "output_dir=out/somewhere", "tune.output_dir=t"])
    save_config(cfg, tmp_path / "deep" / "config.yaml")
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["config.yaml"]  # no temp left
    again = load_config(tmp_path / "deep" / "config.yaml")
    # output folders given relative (the command line's: to the working directory) are saved
    # absolute, so that the saved file, read from its own folder, still writes where this run did
    assert again.output_dir == os.path.abspath("out/somewhere") and again.tune.output_dir == os.path.abspath("t")
    expected = dataclasses.replace(cfg, output_dir=again.output_dir, tune=dataclasses.replace(cfg.tune, output_dir=again.tune.output_dir))
    assert again == expected
    assert config_to_dict(again) == config_to_dict(expected)


def test_config_to_dict_of_a_section(cfg_dict):
    cfg = config_from_dict(cfg_dict)
    assert config_to_dict(cfg.irjs) == {"enabled": True, "placement": "before_step", "source": "noise", "noise": "per_window",
                                        "feather": 0, "decode_statistics": "edit", "decode_outside": "edit"}
    with pytest.raises(TypeError):
        config_to_dict(42)


@pytest.mark.skipif(not CLIPS.is_dir(), reason="the paper clips are not here")
@pytest.mark.parametrize("name,clip", [("dolphins", "dolphins-swimming"), ("hares", "hares-grazing"), ("birds", "birds-standing")])
def test_paper_configs_load(name, clip):
    path = REPO / "configs" / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"{path.name} is not written yet")
    cfg = load_config(path, [f"video.path={CLIPS / clip}.mp4"])
    assert (cfg.video.height, cfg.video.width, cfg.video.n_frames) == (448, 768, 16)
    assert cfg.edits and all(e.objects for e in cfg.edits)


# ----------------------------------------------------------------------------- a model's own defaults


def _model_with_defaults(tmp_path, defaults) -> Path:
    import json

    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    (model / "reatco_defaults.json").write_text(json.dumps(defaults))
    return model


def test_a_model_folders_defaults_fill_what_the_config_does_not_set(tmp_path, clip):
    model = _model_with_defaults(tmp_path, {"model": {"attention_cell_px": 8}, "video": {"height": 64, "width": 64},
                                            "rad": {"step_size": 50.0, "top_k_ratio": 1.0}, "sampling": {"guidance_scale": 10.0}})
    write_yaml(tmp_path / "base.yaml", OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "base.yaml")))
    write_yaml(tmp_path / "c.yaml", {"base_config": "base.yaml", "model": {"pretrained": "model"},
                                     "video": {"path": str(clip), "prompt": "x"}, "rad": {"top_k_ratio": 0.5}})
    cfg = load_config(tmp_path / "c.yaml")
    # base.yaml restates the library's defaults (32, 512, 20.0, 12.5): the model's win over it,
    # the config's own top_k_ratio over the model's
    assert (cfg.model.attention_cell_px, cfg.video.height, cfg.rad.step_size, cfg.sampling.guidance_scale) == (8, 64, 50.0, 10.0)
    assert cfg.rad.top_k_ratio == 0.5
    # overrides win, whether dotted or a section mapping (which keeps the model's other keys)
    cfg = load_config(tmp_path / "c.yaml", ["model.attention_cell_px=16", "rad={step_size: 3.0}"])
    assert (cfg.model.attention_cell_px, cfg.rad.step_size, cfg.rad.top_k_ratio, cfg.video.height) == (16, 3.0, 0.5, 64)
    # a value that equals the library default still counts when the config itself sets it
    write_yaml(tmp_path / "d.yaml", {"base_config": "c.yaml", "model": {"attention_cell_px": 32}, "video": {"height": 512, "width": 512}})
    assert load_config(tmp_path / "d.yaml").model.attention_cell_px == 32
    # and config_from_dict reads them the same way
    cfg = config_from_dict({"model": {"pretrained": str(model)}, "video": {"path": str(clip), "prompt": "x"}})
    assert cfg.model.attention_cell_px == 8 and cfg.rad.top_k_ratio == 1.0


def test_a_bad_model_defaults_file_names_the_file_and_key(tmp_path, clip):
    model = _model_with_defaults(tmp_path, {"rad": {"stepsize": 5}})
    err = error_of(config_from_dict, {"model": {"pretrained": str(model)}, "video": {"path": str(clip), "prompt": "x"}})
    assert "reatco_defaults.json" in err.field and "rad.stepsize" in err.field and "step_size" in str(err)
    (model / "reatco_defaults.json").write_text('{"model": {"pretrained": "elsewhere"}}')
    err = error_of(config_from_dict, {"model": {"pretrained": str(model)}, "video": {"path": str(clip), "prompt": "x"}})
    assert "model.pretrained" in err.field and "run's config" in str(err)


def test_the_shipped_model_carries_the_demos_settings():
    """configs/shapes.yaml sets what data/shapes-model/reatco_defaults.json carries: a config that
    names only the model, the video and the edit gets the same settings."""
    demo = load_config(REPO / "configs" / "shapes.yaml")
    bare = config_from_dict({"base_config": "base.yaml", "model": {"pretrained": "../data/shapes-model"},
                             "video": {"path": "../data/shapes-demo/frames", "prompt": demo.video.prompt,
                                       "n_frames": 8, "fps": 4},
                             "output_dir": demo.output_dir, "edits": config_to_dict(demo)["edits"]},
                            base_dir=REPO / "configs", name="shapes")
    assert config_to_dict(bare) == config_to_dict(demo)


def test_default_threads_leave_busy_cores_alone():
    from reatco.threads import default_threads, set_threads

    assert default_threads(cores=2, load=6.0, torch_default=2) == 1  # a shared, busy machine: one thread
    assert default_threads(cores=16, load=0.2, torch_default=16) == 15
    assert default_threads(cores=16, load=0.0, torch_default=8) == 8  # never above torch's own default
    assert default_threads(cores=2, load=1.5, torch_default=2) == 1
    before = __import__("torch").get_num_threads()
    try:
        assert set_threads(1) == 1 and __import__("torch").get_num_threads() == 1
    finally:
        __import__("torch").set_num_threads(before)
    with pytest.raises(ValueError, match="--threads"):
        set_threads(-1)
