"""ReAtCoPipeline as a diffusers user drives it: dtype=, return_dict, diffusers' callbacks,
interrupt, one prompt per call, saving and loading through DiffusionPipeline, the model folder's
own defaults, and the writers taking the output as it comes."""

import json
import warnings

import numpy as np
import pytest
import torch

from reatco.errors import ConfigError
from reatco.pipeline import ReAtCoPipeline
from reatco.video import read_video, write_video

from tiny_models import save_tiny_sd

N_FRAMES, SIZE, CELL = 3, 32, 4
PROMPT = "a cat and a dog on the grass"
OBJECTS = [{"word": "cat", "box": [0, 0, 16, 16]}, {"word": "dog", "box": [16, 16, 32, 32]}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "model")


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = ReAtCoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _video():
    return torch.rand(N_FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _args(**changes):
    args = dict(prompt=PROMPT, video=_video(), objects=OBJECTS, num_inference_steps=4, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(7), attention_cell_px=CELL, output_type="latent",
                rad={"max_update_steps": 2, "refinement_thresholds": {}})
    args.update(changes)
    return args


class _UNetCalls:
    """Records the batch of text embeddings of every UNet forward (CFG: 2, without: 1)."""

    def __init__(self, unet):
        self.batches = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        self.batches.append(states.shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ----------------------------------------------------------------------------- dtype, return_dict


@pytest.mark.parametrize("spelling", ["dtype", "torch_dtype"])
def test_dtype_puts_every_component_in_it_and_the_call_runs(folder, spelling):
    with warnings.catch_warnings():
        if spelling == "dtype":  # the current spelling: no deprecation warning
            warnings.simplefilter("error", FutureWarning)
        pipe = ReAtCoPipeline.from_pretrained(folder, **{spelling: torch.bfloat16})
    pipe.set_progress_bar_config(disable=True)
    assert {pipe.vae.dtype, pipe.text_encoder.dtype, pipe.unet.dtype} == {torch.bfloat16}
    frames = pipe(**_args(num_inference_steps=2, output_type="pt")).frames
    assert frames.shape == (1, N_FRAMES, 3, SIZE, SIZE) and torch.isfinite(frames).all()


def test_dtype_and_torch_dtype_must_agree(folder):
    with pytest.raises(ValueError, match="only dtype="):
        ReAtCoPipeline.from_pretrained(folder, dtype=torch.float16, torch_dtype=torch.float32)


def test_return_dict_false_gives_the_tuple(pipe):
    out = pipe(**_args(return_attention=True))
    frames, losses, attention = pipe(**_args(return_attention=True, return_dict=False))
    assert torch.equal(frames, out.frames) and losses == out.rad_losses and torch.equal(attention, out.attention_maps)


# ----------------------------------------------------------------------------- callbacks


def test_diffusers_cfg_cutoff_callback_turns_guidance_off_after_its_step(pipe):
    from diffusers.callbacks import SDCFGCutoffCallback

    with _UNetCalls(pipe.unet) as calls:
        pipe(**_args(rad={"enabled": False}, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.25)))
    assert pipe.num_timesteps == 4 and pipe.guidance_scale == 0.0
    # 4 inversion steps (no guidance), then sampling: the cut-off at step int(4 × 0.25) = 1 acts
    # after that step's forward, so steps 2 and 3 run without guidance
    assert calls.batches == [1, 1, 1, 1] + [2, 2, 1, 1]


def test_callback_reads_and_replaces_the_offered_tensors(pipe):
    seen = []

    def callback(p, step, timestep, tensors):
        seen.append({k: tuple(v.shape) for k, v in tensors.items()})
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 3 else {}

    out = pipe(**_args(callback_on_step_end=callback,
                       callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"]))
    assert len(seen) == 4 and seen[0]["prompt_embeds"][0] == 2 and seen[0]["negative_prompt_embeds"][0] == 1
    assert torch.equal(out.frames, torch.zeros_like(out.frames))  # the last step's replacement is the output


def test_interrupt_skips_the_remaining_steps(pipe):
    def stop(p, step, timestep, tensors):
        if step == 1:
            p._interrupt = True
        return {}

    with _UNetCalls(pipe.unet) as calls:
        out = pipe(**_args(rad={"enabled": False}, callback_on_step_end=stop))
    assert len(calls.batches) == 4 + 2 and pipe.interrupt  # the inversion's 4, then 2 sampling steps
    assert out.frames.shape[2] == N_FRAMES


def _no_work(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "encode_video", lambda *a, **k: pytest.fail("work started before the check"))


def test_unknown_callback_tensor_is_refused_before_any_work(pipe, monkeypatch):
    _no_work(pipe, monkeypatch)
    with pytest.raises(ValueError, match=r"source_t.*offers \['latents', 'prompt_embeds', 'negative_prompt_embeds'\]"):
        pipe(**_args(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["latents", "source_t"]))


def test_lists_of_prompts_or_generators_are_refused_before_any_work(pipe, monkeypatch):
    one = pipe(**_args(prompt=[PROMPT], generator=[torch.Generator().manual_seed(7)])).frames
    assert torch.equal(one, pipe(**_args()).frames)  # a list of one is that one
    _no_work(pipe, monkeypatch)
    with pytest.raises(ValueError, match="prompt: ReAtCoPipeline edits one video per call.*list of 2"):
        pipe(**_args(prompt=[PROMPT, PROMPT]))
    with pytest.raises(ValueError, match="generator: .*list of 2"):
        pipe(**_args(generator=[torch.Generator(), torch.Generator()]))


# ----------------------------------------------------------------------------- saving and loading


def test_a_saved_pipeline_loads_through_diffusers_and_reatco(pipe, tmp_path):
    from diffusers import DiffusionPipeline, UNet3DConditionModel

    pipe.model_defaults = {"model": {"attention_cell_px": CELL}, "sampling": {"steps": 3}}
    try:
        pipe.save_pretrained(tmp_path / "saved")
    finally:
        pipe.model_defaults = {}
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["reatco_pipeline", "ReAtCoPipeline"] and index["unet"][0].startswith("reatco")
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers' rule for code in a folder
        DiffusionPipeline.from_pretrained(tmp_path / "saved")
    loaded = {
        "diffusers": DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True),
        "reatco": ReAtCoPipeline.from_pretrained(tmp_path / "saved"),  # its own one-line file: trusted
    }
    expected = pipe(**_args(num_inference_steps=3)).frames
    for name, other in loaded.items():
        assert type(other) is ReAtCoPipeline, name
        assert other.model_defaults == {"model": {"attention_cell_px": CELL}, "sampling": {"steps": 3}}, name
        other.set_progress_bar_config(disable=True)
        # the folder's defaults give the steps and the cell the explicit call above named
        frames = other(**{k: v for k, v in _args().items() if k not in ("num_inference_steps", "attention_cell_px")}).frames
        assert torch.equal(frames, expected), name
    # the UNet folder keeps the Tune-A-Video format, which diffusers' class of that name refuses
    assert "TuneAVideoUNet.from_pretrained" in (tmp_path / "saved" / "unet" / "README.md").read_text()
    with pytest.raises(Exception):
        UNet3DConditionModel.from_pretrained(tmp_path / "saved" / "unet")


# ----------------------------------------------------------------------------- the model's defaults


def test_model_defaults_fill_what_the_call_leaves_out(folder, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(folder, model)
    (model / "reatco_defaults.json").write_text(json.dumps({
        "model": {"attention_cell_px": CELL}, "sampling": {"steps": 3, "guidance_scale": 2.0},
        "rad": {"max_update_steps": 1, "refinement_thresholds": {"0": 0.5}, "max_refinement_iters": 1}}))
    pipe = ReAtCoPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.model_defaults["rad"]["refinement_thresholds"] == {0: 0.5}
    out = pipe(PROMPT, video=_video(), objects=OBJECTS, generator=torch.Generator().manual_seed(7), output_type="latent")
    assert pipe.num_timesteps == 3 and pipe.guidance_scale == 2.0 and len(out.rad_losses) == 1
    # the call's arguments win; a rad dict is merged over the model's rad settings
    out = pipe(PROMPT, video=_video(), objects=OBJECTS, num_inference_steps=4, guidance_scale=3.0,
               rad={"max_update_steps": 2}, generator=torch.Generator().manual_seed(7), output_type="latent")
    assert pipe.num_timesteps == 4 and pipe.guidance_scale == 3.0 and len(out.rad_losses) == 2
    (model / "reatco_defaults.json").write_text(json.dumps({"rad": {"step_sise": 3}}))
    with pytest.raises(ConfigError, match=r"reatco_defaults.json: rad.step_sise.*step_size"):
        ReAtCoPipeline.from_pretrained(model)


def test_warns_when_a_word_has_no_attention_in_its_region(caplog):
    """The shipped shapes model with the library's RAD defaults (softmax over tokens): its
    attention sits in EOT/padding, the words' maps are ~0 and RAD could not move them."""
    from pathlib import Path

    shapes = Path(__file__).resolve().parents[1] / "data" / "shapes-model"
    pipe = ReAtCoPipeline.from_pretrained(shapes)
    pipe.set_progress_bar_config(disable=True)
    video = read_video(shapes.parent / "shapes-demo" / "frames", 64, 64, n_frames=2)
    args = dict(prompt="a green circle and a yellow triangle on a gray background", video=video,
                objects=[{"word": "green circle", "box": [24, 40, 48, 64]}], num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="latent")
    with caplog.at_level("WARNING", logger="reatco.pipeline"):
        pipe(**args)  # the model's defaults: no warning
    assert not [r for r in caplog.records if "almost no attention" in r.getMessage()]
    with caplog.at_level("WARNING", logger="reatco.pipeline"):
        out = pipe(**args, rad={"token_normalization": "softmax", "normalize_eot": False})
    assert out.rad_losses[0]["inner"]["green circle"] > 0.99
    message = next(r.getMessage() for r in caplog.records if "almost no attention" in r.getMessage())
    assert "'green circle'" in message and "attention_cell_px=8" in message and "token_normalization='softmax'" in message


# ----------------------------------------------------------------------------- output range


def test_outputs_have_diffusers_video_shapes_and_np_is_the_default(pipe):
    """As diffusers' video pipelines (WanPipeline, TextToVideoSDPipeline): a batch of one clip."""
    def args():  # a fresh generator per call
        return {k: v for k, v in _args().items() if k != "output_type"}

    default = pipe(**args()).frames
    assert isinstance(default, np.ndarray) and default.shape == (1, N_FRAMES, SIZE, SIZE, 3) and default.dtype == np.float32
    assert 0 <= default.min() and default.max() <= 1
    pt = pipe(**args(), output_type="pt").frames
    assert tuple(pt.shape) == (1, N_FRAMES, 3, SIZE, SIZE) and np.array_equal(pt[0].permute(0, 2, 3, 1).numpy(), default[0])
    pil = pipe(**args(), output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == N_FRAMES and pil[0][0].size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(pil[0][1]), (default[0, 1] * 255).round().astype(np.uint8))


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_writers_take_the_output_as_it_comes(pipe, tmp_path, output_type):
    from reatco.video import write_frames

    out = pipe(**_args(output_type=output_type))
    reference = pipe(**_args(output_type="pt")).frames[0]  # [0, 1]
    expected = (reference.permute(0, 2, 3, 1).numpy() * 255).round()
    write_frames(out.frames[0], tmp_path / "frames")  # png: exact
    back = ((read_video(tmp_path / "frames", SIZE, SIZE) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(back, expected)

    def frame_means(path):  # h264 blurs 32 px noise; a frame's mean colour survives (washed out: +64)
        return ((read_video(path, SIZE, SIZE) + 1) * 127.5).mean(dim=(2, 3)).numpy()

    write_video(out.frames[0], tmp_path / "edited.mp4")
    assert np.abs(frame_means(tmp_path / "edited.mp4") - expected.mean(axis=(1, 2))).max() < 3
    if output_type != "pt":  # diffusers' writer takes the "np" and "pil" clip as every diffusers video pipeline's docs show
        from diffusers.utils import export_to_video

        export_to_video(out.frames[0], str(tmp_path / "diffusers.mp4"), fps=4)
        assert np.abs(frame_means(tmp_path / "diffusers.mp4") - expected.mean(axis=(1, 2))).max() < 3


# ----------------------------------------------------------------------------- notebooks: config → call


def test_pipeline_arguments_turn_a_config_edit_into_the_call(pipe, folder, tmp_path):
    from reatco import pipeline_arguments
    from reatco.config_files import config_from_dict
    from reatco.video import write_frames

    write_frames((_video() + 1) / 2, tmp_path / "frames")
    cfg = config_from_dict({
        "model": {"pretrained": str(folder), "attention_cell_px": CELL},
        "video": {"path": str(tmp_path / "frames"), "prompt": "x", "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "sampling": {"steps": 4, "guidance_scale": 3.0, "seed": 7},
        "rad": {"max_update_steps": 2, "refinement_thresholds": {}},
        "edits": [{"name": "a", "prompt": PROMPT, "objects": OBJECTS},
                  {"name": "b", "prompt": PROMPT, "objects": OBJECTS, "rad": {"max_update_steps": 1}}]})
    args = pipeline_arguments(cfg, "b")
    assert args["rad"].max_update_steps == 1 and args["objects"][1] == {"word": "dog", "occurrence": None, "box": [16, 16, 32, 32]}
    out = pipe(**{**pipeline_arguments(cfg), "output_type": "latent"})
    video = read_video(tmp_path / "frames", SIZE, SIZE)
    same = pipe(**_args(video=video, rad={**_args()["rad"], "enabled": True}))
    assert torch.equal(out.frames, same.frames) and len(out.rad_losses) == 2
    with pytest.raises(ValueError, match=r"no edit named 'c'.*\['a', 'b'\]"):
        pipeline_arguments(cfg, "c")



@pytest.mark.parametrize("start", ["inversion", "tracked_noise"])
def test_the_runner_and_the_library_give_the_same_edit_for_one_seed(folder, tmp_path, start):
    """scripts/edit.py (EditRunner: the encode and inversion cached apart from the edit) and
    pipe(video=…, generator=…) encode from generators derived alike, so every draw after the
    encode (the regions' noise, the IRJS noise) is the same too: one seed, one edit."""
    from reatco import pipeline_arguments
    from reatco.config_files import config_from_dict
    from reatco.runner import EditRunner
    from reatco.video import write_frames

    write_frames((_video() + 1) / 2, tmp_path / "frames")
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "model": {"pretrained": str(folder), "attention_cell_px": CELL},
        "video": {"path": str(tmp_path / "frames"), "prompt": "x", "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "sampling": {"steps": 3, "guidance_scale": 3.0, "seed": 7, "start_in_regions": start},
        "rad": {"max_update_steps": 2, "refinement_thresholds": {}},
        "irjs": {"source": "noise"},  # draws from the generator at every step
        "edits": [{"name": "a", "prompt": PROMPT, "objects": OBJECTS}]})
    runner = EditRunner(cfg, progress=False)
    result = runner.run(runner.prepare()[0], write=False)
    args = pipeline_arguments(cfg, "a")
    assert args["generator"].initial_seed() == 7
    library = runner.pipeline()(**{**args, "output_type": "np"}).frames[0]
    assert np.array_equal(result.frames, (library * 255).round().astype(np.uint8))
    # the encode leaves the caller's generator where it was
    generator = torch.Generator().manual_seed(7)
    runner.pipeline()(**{**args, "generator": generator, "output_type": "latent", "num_inference_steps": 1,
                         "rad": {"enabled": False}, "irjs": {"source": "inversion"}, "start_in_regions": "inversion"})
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(7).get_state())


def test_a_config_whose_objects_are_found_or_read_from_files_goes_through_the_notebook_bridge(folder, tmp_path):
    """pipeline_arguments passes every region kind (configs/shapes-auto.yaml finds its objects in the
    source video): `source` is found by the pipeline with its own model as EditRunner finds it, a
    boxes file is read for the clip's frames; one seed gives the runner's edit."""
    from reatco import pipeline_arguments
    from reatco.config_files import config_from_dict
    from reatco.runner import EditRunner
    from reatco.video import write_frames

    write_frames((_video() + 1) / 2, tmp_path / "frames")
    (tmp_path / "dog.json").write_text(json.dumps({"boxes": {"dog": [[16, 16, 32, 32]] * N_FRAMES}}))
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "model": {"pretrained": str(folder), "attention_cell_px": CELL},
        "video": {"path": str(tmp_path / "frames"), "prompt": PROMPT, "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "sampling": {"steps": 3, "guidance_scale": 3.0, "seed": 7},
        "rad": {"max_update_steps": 2, "refinement_thresholds": {}},
        "edits": [{"name": "a", "prompt": PROMPT, "objects": [
            {"word": "cat", "source": {"word": "dog", "timesteps": [50]}},
            {"word": "dog", "boxes_file": str(tmp_path / "dog.json")}]}]})
    runner = EditRunner(cfg, progress=False)
    prepared = runner.prepare()[0]
    result = runner.run(prepared, write=False)
    args = pipeline_arguments(cfg, "a")
    assert args["objects"][0]["source"].word == "dog" and args["source_prompt"] == PROMPT
    assert torch.equal(args["objects"][1]["region"].boxes, prepared.regions[1].boxes)
    library = runner.pipeline()(**{**args, "output_type": "np"}).frames[0]  # diffusers: a batch of one clip
    assert np.array_equal(result.frames, (library * 255).round().astype(np.uint8))
    with pytest.raises(ConfigError, match=r"objects\[0\]\.source: a region found in the source video needs"):
        runner.pipeline()(**{k: v for k, v in args.items() if k not in ("video", "irjs")}, n_frames=N_FRAMES, height=SIZE,
                          width=SIZE, irjs={"enabled": False})


def _count_calls_on(tokenizer, text):
    """Every call of `tokenizer` on `text` (its class swapped for a counting subclass)."""
    calls = []
    base = type(tokenizer)

    class Counting(base):
        def __call__(self, value, *args, **kwargs):
            if value == text:
                calls.append(kwargs)
            return super().__call__(value, *args, **kwargs)

    tokenizer.__class__ = Counting
    return calls


def test_the_prompt_is_tokenized_once_per_edit(folder, tmp_path):
    """From Python (objects given as dicts: words found, lengths checked, prompt encoded) and from
    scripts/edit.py (EditRunner: the edit checked without weights, then run): one tokenization."""
    from reatco.config_files import config_from_dict
    from reatco.runner import EditRunner
    from reatco.video import write_frames

    pipe = ReAtCoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    calls = _count_calls_on(pipe.tokenizer, PROMPT)
    pipe(**_args(rad={"max_update_steps": 2, "refinement_thresholds": {}, "normalize_eot": True}, num_inference_steps=2))
    assert len(calls) == 1

    write_frames((_video() + 1) / 2, tmp_path / "frames")
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "model": {"pretrained": str(folder), "attention_cell_px": CELL},
        "video": {"path": str(tmp_path / "frames"), "prompt": "x", "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
        "sampling": {"steps": 2, "guidance_scale": 3.0},
        "rad": {"max_update_steps": 1, "refinement_thresholds": {}, "normalize_eot": True},
        "edits": [{"name": "a", "prompt": PROMPT, "objects": OBJECTS}]})
    runner = EditRunner(cfg, progress=False)
    calls = _count_calls_on(runner.tokenizer, PROMPT)
    runner.run(runner.prepare()[0], write=False)
    assert len(calls) == 1 and runner.pipeline().tokenizer is runner.tokenizer


_BOX = [0, 0, 16, 16]


@pytest.mark.parametrize("obj, call, field, config_field", [
    ({"word": "cat", "box": _BOX, "mask": "m.png"}, {}, "objects[0]", "edits[0].objects[0]"),
    ({"word": "cat"}, {}, "objects[0]", "edits[0].objects[0]"),
    ({"word": " ", "box": _BOX}, {}, "objects[0].word", "edits[0].objects[0].word"),
    ({"word": "cat", "occurrence": 0, "box": _BOX}, {}, "objects[0].occurrence", "edits[0].objects[0].occurrence"),
    ({"word": "cat", "track": 1, "box": _BOX}, {}, "objects[0].track", "edits[0].objects[0].track"),
    ({"word": "cat", "box": _BOX}, {"guidance_scale": 0.5}, "guidance_scale", "sampling.guidance_scale"),
    ({"word": "cat", "box": _BOX}, {"start_in_regions": "nois"}, "start_in_regions", "sampling.start_in_regions"),
    ({"word": "cat", "box": _BOX}, {"attention_cell_px": 0}, "attention_cell_px", "model.attention_cell_px"),
    ({"word": "cat", "box": _BOX}, {"num_inference_steps": 0}, "num_inference_steps", "sampling.steps"),
])
def test_a_bad_setting_reads_the_same_from_python_and_from_a_config(pipe, monkeypatch, tmp_path, obj, call, field,
                                                                     config_field):
    """One validator per section and one for a user's object: the pipeline (dicts from Python) and
    load_config say the same thing, naming the field as each entry point spells it, before any work."""
    from reatco.config_files import config_from_dict

    config_values = {"guidance_scale": ("sampling", "guidance_scale"), "start_in_regions": ("sampling", "start_in_regions"),
                     "attention_cell_px": ("model", "attention_cell_px"), "num_inference_steps": ("sampling", "steps")}
    raw = {"model": {"pretrained": "x", "attention_cell_px": 8}, "sampling": {},
           "video": {"path": "v.mp4", "height": SIZE, "width": SIZE, "n_frames": N_FRAMES},
           "edits": [{"name": "a", "prompt": PROMPT, "objects": [obj]}]}
    for name, value in call.items():
        section, key = config_values[name]
        raw[section][key] = value
    with pytest.raises(ConfigError) as from_config:
        config_from_dict(raw, check_paths=False)
    _no_work(pipe, monkeypatch)
    with pytest.raises(ConfigError) as from_python:
        pipe(**_args(objects=[obj], **call))
    assert (from_python.value.field, from_config.value.field) == (field, config_field)
    assert from_python.value.message == from_config.value.message


def test_an_unknown_key_of_an_object_from_python_is_named_with_a_suggestion(pipe, monkeypatch):
    _no_work(pipe, monkeypatch)
    with pytest.raises(ConfigError, match=r"^objects\[1\].boxs: unknown key; did you mean 'objects\[1\].boxes'"):
        pipe(**_args(objects=[OBJECTS[0], {"word": "dog", "boxs": [_BOX] * N_FRAMES}]))
