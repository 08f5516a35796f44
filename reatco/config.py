"""The run's configuration: its sections (model, video, tune, inversion, sampling, window, edits)
as commented dataclasses, the parts' own sections (`rad`, `irjs`, objects) taken from their
settings.py, the per-edit merge, and `validate()`: every value checked, with a `ConfigError`
naming the field — before any model loads.

Reading YAML files, `base_config:`, `--set` overrides, model folders' defaults and saving:
config_files.py.
"""

import copy
import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .irjs.settings import IRJSConfig, validate_irjs
from .rad.settings import RADConfig, validate_rad
from .regions.settings import (REGION_KEYS, ObjectConfig, SourceRegionConfig, object_settings, region_kind, validate_object,
                               validate_source)
from .model_files import check_model_cell, train_timesteps
from .schema import (at_least, check_finite_values, check_known_keys, check_seed, choice, config_to_dict, join_path, merge_dicts,
                     omegaconf_error, require, typed)
from .video import check_size

# ----------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    """Which weights to edit with."""

    # Hub id or local folder in Stable Diffusion layout (model_index.json, unet/, vae/, ...).
    pretrained: str = "CompVis/stable-diffusion-v1-4"
    # Folder of a Tune-A-Video UNet (ours or the original code's); null: tune or inflate.
    tuned_unet: Optional[str] = None
    # Pixels per RAD attention cell: 32 for SD v1.x (16×16 at 512 px), 8 for the shapes model.
    attention_cell_px: int = 32
    # auto | float32 | float16 | bfloat16; auto = float16 on CUDA, float32 on CPU.
    dtype: str = "auto"
    # auto | cpu | cuda | cuda:N | mps.
    device: str = "auto"
    # none | bf16: encoding, inversion and editing under bfloat16 autocast, the weights staying in
    # dtype (on the shapes benchmark it keeps the gates; README "Threads and bfloat16 on a CPU").
    autocast: str = "none"
    # auto | unet | wan: the network the edit drives. auto: wan when the model folder's
    # model_index.json names a Wan pipeline (or a hub id names Wan), else unet (Tune-A-Video).
    backbone: str = "auto"


@dataclass
class VideoConfig:
    """The source video and the working resolution."""

    # mp4/avi/mov/... file or a folder of jpg/png frames (required).
    path: Optional[str] = None
    # Prompt describing the source video (used to tune the UNet on it).
    prompt: str = ""
    # Working size in pixels: frames are resized to height×width (multiples of 8).
    height: int = 512
    width: int = 512
    # Frames to edit, taken from start_frame every frame_stride frames.
    n_frames: int = 8
    start_frame: int = 0
    frame_stride: int = 1
    # Frame rate of the written videos.
    fps: int = 8
    # Wan only: its VAE needs 4k + 1 frames (17, 81, ...). true: another n_frames is padded to the
    # next 4k + 1 by repeating the last frame (the padded frames are edited, then dropped from the
    # outputs); false: another n_frames is refused.
    pad_frames: bool = False


@dataclass
class TuneConfig:
    """One-shot Tune-A-Video tuning on the source video."""

    # Tune when model.tuned_unet is null (the result is cached in <cache_dir>/tuned/<key>, the key
    # a hash of the model, the frames as read, the prompt and every setting below). Off by default:
    # on the shapes benchmark no tuning keeps placement and the invariant region as 100 steps do
    # (held out: 0.97 / 35.5 dB against 0.95 / 35.2), and tuning is most of a first edit's cost.
    enabled: bool = False
    steps: int = 200  # the official configs' count
    learning_rate: float = 3e-5
    # Parameters trained, chosen by module-name suffix.
    trainable_modules: List[str] = field(default_factory=lambda: ["attn1.to_q", "attn2.to_q", "attn_temp"])
    seed: int = 33
    # auto | no | fp16 | bf16; auto = fp16 on CUDA, no on CPU.
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    batch_size: int = 1
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    # The fields above decide the tuned weights (reatco.tuning.training_settings: the cache key's
    # settings); the ones below say where the result goes.
    # Where the tuned UNet goes; null: the cache, <cache_dir>/tuned/<key>. A folder given here is
    # reused only when it was tuned with this exact setup (its tune_report.json holds the key).
    output_dir: Optional[str] = None
    # Retune even when a finished result is there.
    overwrite: bool = False


@dataclass
class InversionConfig:
    """DDIM inversion of the source latents."""

    # null: sampling.steps (the trajectory pairs step by step with the sampling).
    steps: Optional[int] = None
    # Prompt used while inverting ("" = the empty prompt, as in the paper).
    prompt: str = ""
    # 1.0 = no classifier-free guidance.
    guidance_scale: float = 1.0
    # null: <cache_dir>/inversion (files named by a hash of the model, UNet, frames as read,
    # steps, prompt, guidance, seed and dtype).
    cache_dir: Optional[str] = None
    # Wan only (flow inversion): 0 = Euler; k > 0 = each step solved as the exact inverse of the
    # sampler's Euler step by k fixed-point iterations (k more model calls a step; on the tiny test
    # model 8 steps reconstruct the source to 0.22 with Euler, 8e-7 with k = 10, tests/test_wan.py).
    fixed_point_iters: int = 0


@dataclass
class SamplingConfig:
    """DDIM sampling of the edited video."""

    steps: int = 50
    # Classifier-free guidance (paper: 12.5; the hares scripts: 5.5). 1.0 = no guidance.
    guidance_scale: float = 12.5
    # Seeds the VAE encoding, the IRJS noise and everything else random in an edit.
    seed: int = 33
    negative_prompt: str = ""
    # Where the edit starts inside the regions: inversion (the paper: the DDIM-inverted source
    # everywhere) | noise (fresh seeded noise in the regions' latent cells, the inverted source
    # outside). The inverted latent keeps the source object's layout, which fights a new shape
    # in the same place; noise leaves the regions to the prompt and RAD | tracked_noise (the same,
    # but each object's noise is one patch that moves with its region, so every frame of the
    # object starts from the same noise; independent draws per frame left single frames empty).
    start_in_regions: str = "inversion"


@dataclass
class WindowConfig:
    """Resource-friendly mode: denoise overlapping temporal windows and average them."""

    # Frames per window; null (or ≥ n_frames) = the whole clip in one pass.
    size: Optional[int] = None
    stride: int = 1


@dataclass
class EditConfig:
    """One edit of the source video; its outputs go to <output_dir>/<name>/."""

    # Output sub-folder name (letters, digits, . _ -).
    name: str = ""
    # The edited prompt P'.
    prompt: str = ""
    objects: List[ObjectConfig] = field(default_factory=list)
    # Partial overrides of the top-level sections for this edit only (e.g. irjs: {enabled: false}).
    rad: Optional[Dict[str, Any]] = field(default=None, metadata={"partial": RADConfig})
    irjs: Optional[Dict[str, Any]] = field(default=None, metadata={"partial": IRJSConfig})
    sampling: Optional[Dict[str, Any]] = field(default=None, metadata={"partial": SamplingConfig})
    window: Optional[Dict[str, Any]] = field(default=None, metadata={"partial": WindowConfig})


@dataclass
class ReAtCoConfig:
    """Everything one `scripts/edit.py` run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rad: RADConfig = field(default_factory=RADConfig)
    irjs: IRJSConfig = field(default_factory=IRJSConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    edits: List[EditConfig] = field(default_factory=list)
    # Results folder (in a YAML: relative to the file; null: outputs/<config file stem> in the working directory).
    output_dir: Optional[str] = None
    # Tuned UNets and inversions, shared by every output folder; null: $REATCO_CACHE_DIR, else
    # ~/.cache/reatco. Entries are keyed by content, so a changed input is never served stale.
    cache_dir: Optional[str] = None
    # What each edit writes besides edited.mp4, regions.png, config.yaml and report.json.
    save_attention: bool = True
    save_gif: bool = True
    save_frames: bool = True


# Sections an edit may partially override.
EDIT_SECTIONS = ("rad", "irjs", "sampling", "window")

# ----------------------------------------------------------------------------- per-edit config


def _edit_index(cfg: ReAtCoConfig, edit: EditConfig) -> str:
    for k, other in enumerate(cfg.edits):
        if other is edit:
            return f"edits[{k}]"
    for k, other in enumerate(cfg.edits):
        if other.name == edit.name:
            return f"edits[{k}]"
    return f"edit {edit.name!r}"


def edit_config(cfg: ReAtCoConfig, edit: EditConfig) -> ReAtCoConfig:
    """A copy of `cfg` for one edit: its partial rad/irjs/sampling/window overrides merged over
    the top-level sections, and `edits` holding only this edit (so the saved config reruns it).
    The input is not modified."""
    prefix = _edit_index(cfg, edit)
    changes: Dict[str, Any] = {"edits": [copy.deepcopy(edit)]}
    for section in EDIT_SECTIONS:
        override = getattr(edit, section)
        if not override:
            continue
        cls = type(getattr(cfg, section))
        where = f"{prefix}.{section}"
        if not isinstance(override, dict):
            raise ConfigError(where, f"must be a mapping of {section} settings, e.g. {{enabled: false}}")
        check_known_keys(override, cls, where)
        changes[section] = typed(cls, merge_dicts(config_to_dict(getattr(cfg, section)), override), where)
    return dataclasses.replace(copy.deepcopy(cfg), **changes)


# ----------------------------------------------------------------------------- validation

DType = Literal["auto", "float32", "float16", "bfloat16"]
Autocast = Literal["none", "bf16"]
Backbone = Literal["auto", "unet", "wan"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
StartInRegions = Literal["inversion", "noise", "tracked_noise"]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _writable_folder(path, field_: str) -> None:
    """A folder that is there or can be made: checked before any model loads, so that a typo does
    not cost a whole tuning."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists() and not p.is_dir():
        raise ConfigError(field_, f"{p} is a file, not a folder; give a folder path")
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(field_, f"{p} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(field_, f"{p} cannot be written: {probe} is not writable")
    # os.access says yes to root everywhere, and /proc or a read-only mount refuse anyway: try it
    # (an empty temp folder, removed at once)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".reatco-write-check-", dir=probe))
    except OSError as err:
        raise ConfigError(field_, f"{p} cannot be written ({err.strerror or err} in {probe}); choose another folder") from None


def validate_sampling(s: SamplingConfig, p: str = "sampling") -> None:
    """Check a sampling section (ConfigError naming `p`.field; `p` = "": the pipeline's own
    arguments, guidance_scale and start_in_regions; steps is then num_inference_steps)."""
    at_least(s.steps, 1, join_path(p, "steps") if p else "num_inference_steps")
    at_least(s.guidance_scale, 1.0, join_path(p, "guidance_scale"), " (1.0 = no guidance)")
    check_seed(s.seed, join_path(p, "seed"))
    choice(s.start_in_regions, StartInRegions, join_path(p, "start_in_regions"))


def check_attention_cell_px(value, field_: str = "model.attention_cell_px") -> None:
    """The RAD attention cell in pixels (the config's model.attention_cell_px, the pipeline's
    attention_cell_px)."""
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, field_,
             f"must be ≥ 1 px (32 for SD v1.x, 8 for the shapes model), got {value!r}")


def validate_window(w: WindowConfig, p: str = "window") -> None:
    """Check a window section (ConfigError naming `p`.field)."""
    at_least(w.stride, 1, f"{p}.stride")
    if w.size is not None:
        at_least(w.size, 1, f"{p}.size", " (or null for the whole clip)")
        require(w.stride <= w.size, f"{p}.stride", f"{w.stride} is larger than {p}.size ({w.size}): windows would skip frames")


_SECTIONS = {"rad": RADConfig, "irjs": IRJSConfig, "window": WindowConfig, "tune": TuneConfig, "sampling": SamplingConfig}


def section_settings(section: str, value=None, steps: Optional[int] = None, field: Optional[str] = None):
    """A `rad=` / `irjs=` / `window=` value given to the pipeline from Python (or the `tune`
    settings given to `reatco.tuning.tune_unet`) → the validated section dataclass, through the same schema and checks as a YAML file, with the same
    ConfigErrors: None (the defaults), a partial dict (or OmegaConf mapping) of the section's
    fields merged over the defaults, or the section's dataclass. Digit-string keys of
    `refinement_thresholds` ({"0": 0.9}, as JSON leaves them) become step indices.

    `steps`: the sampling steps; refinement thresholds must lie within them, except the default
    table, which simply fires where the run reaches (as it did before this check). `field`: the
    prefix errors name (default: the section's name; "" for settings that are the pipeline's own
    arguments, e.g. guidance_scale)."""
    if section not in _SECTIONS:
        raise ValueError(f"section must be one of {', '.join(_SECTIONS)}, got {section!r}")
    cls = _SECTIONS[section]
    where = section if field is None else field
    if value is None:
        raw: Dict[str, Any] = {}
    elif isinstance(value, cls):
        raw = config_to_dict(value)
    elif is_dataclass(value) and not isinstance(value, type):
        raise ConfigError(where or section, f"expected a {cls.__name__} or a dict of its fields, got a {type(value).__name__}")
    else:
        try:
            raw = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except OmegaConfBaseException as err:
            raise omegaconf_error(err, where) from err
        if not isinstance(raw, dict):
            raise ConfigError(where or section, f"must be a mapping of {section} settings (or a {cls.__name__}), got {value!r}")
        raw = copy.deepcopy(dict(raw))
    check_known_keys(raw, cls, where)
    check_finite_values(raw, where)
    settings = typed(cls, raw, where)
    if section == "rad":
        default = RADConfig().refinement_thresholds
        validate_rad(settings, None if settings.refinement_thresholds == default else steps, where)
    else:
        validators = {"irjs": validate_irjs, "window": validate_window, "tune": validate_tune, "sampling": validate_sampling}
        validators[section](settings, where)
    return settings


def _check_shard_indexes(folder, field_: str) -> None:
    """A sharded UNet's index.json, read before any weights load: its shards are files in the
    folder (an untrusted index never names a file elsewhere)."""
    indexes = [p for sub in (Path(folder), Path(folder) / "unet") if sub.is_dir() for p in sub.glob("*.index.json")]
    if not indexes:
        return
    from .backbones.tav.checkpoint import CheckpointError, index_shards  # torch and diffusers: only when there is one

    for index in indexes:
        try:
            for shard in index_shards(str(index)):
                target = index.parent / shard
                require(target.is_file(), field_, f"{index} names the shard {shard!r}, which is not in {index.parent}; "
                                                  "copy the whole UNet folder again")
                require(target.resolve().parent == index.parent.resolve(), field_,
                        f"{index}: the shard {shard!r} links outside {index.parent}; shards must be files in the folder")
        except CheckpointError as err:
            raise ConfigError(field_, str(err)) from None


def _validate_model(m: ModelConfig, check_paths: bool) -> None:
    require(bool(m.pretrained), "model.pretrained", "is empty; give a hub id or a folder in Stable Diffusion layout")
    if check_paths and m.tuned_unet is not None:
        require(os.path.isdir(m.tuned_unet), "model.tuned_unet",
                 f"{m.tuned_unet} is not a folder; give a Tune-A-Video UNet folder or null to tune")
        _check_shard_indexes(m.tuned_unet, "model.tuned_unet")
    check_attention_cell_px(m.attention_cell_px, "model.attention_cell_px")
    check_model_cell(m.attention_cell_px, m.pretrained, "model.attention_cell_px")
    choice(m.dtype, DType, "model.dtype")
    choice(m.autocast, Autocast, "model.autocast")
    choice(m.backbone, Backbone, "model.backbone")
    require(bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", m.device)), "model.device",
             f"{m.device!r} is not one of auto, cpu, cuda, cuda:N, mps")


def _validate_video(v: VideoConfig, cfg: ReAtCoConfig, check_paths: bool) -> None:
    require(bool(v.path), "video.path", "is required: an mp4 (or avi, mov, ...) file or a folder of jpg/png frames")
    if check_paths:
        require(os.path.exists(v.path), "video.path",
                f"{v.path} does not exist; give a video file or a folder of frames (the paper's clips are not "
                "shipped: data/README.md says where to get them and where they go)")
    if cfg.tune.enabled and cfg.model.tuned_unet is None:
        require(bool(v.prompt.strip()), "video.prompt", "is empty; describe the source video (tuning uses it)")
    check_size(v.height, v.width, multiple=8, field="video")
    cell = cfg.model.attention_cell_px
    for name, size in (("height", v.height), ("width", v.width)):  # the attention grid must tile the frame
        if size % cell == 0:
            continue
        low = size // cell * cell
        # A model's cells are powers of two (SD: 32, the shapes model: 8): then the size is off;
        # any other cell is itself the mistake.
        field_ = f"video.{name}" if cell & (cell - 1) == 0 else "model.attention_cell_px"
        raise ConfigError(field_, f"model.attention_cell_px ({cell} px) does not divide video.{name} ({size}): the RAD "
                          f"attention grid must tile the frame; nearest valid sizes: {low or cell} or {low + cell}; "
                          "the cell is the model's (32 for SD v1.x, 8 for the shapes model)")
    at_least(v.n_frames, 1, "video.n_frames")
    at_least(v.start_frame, 0, "video.start_frame")
    at_least(v.frame_stride, 1, "video.frame_stride")
    at_least(v.fps, 1, "video.fps")


def validate_tune(t: TuneConfig, p: str = "tune") -> None:
    """Check a tune section (ConfigError naming `p`.field)."""
    at_least(t.steps, 1, f"{p}.steps")
    require(t.learning_rate > 0, f"{p}.learning_rate", f"must be > 0 (default 3e-5), got {t.learning_rate}")
    require(len(t.trainable_modules) > 0 and all(t.trainable_modules), f"{p}.trainable_modules",
             "must name at least one module suffix, e.g. [attn1.to_q, attn2.to_q, attn_temp]")
    check_seed(t.seed, f"{p}.seed")
    choice(t.mixed_precision, MixedPrecision, f"{p}.mixed_precision")
    at_least(t.batch_size, 1, f"{p}.batch_size")
    at_least(t.adam_weight_decay, 0, f"{p}.adam_weight_decay")
    require(t.max_grad_norm > 0, f"{p}.max_grad_norm", f"must be > 0 (default 1.0), got {t.max_grad_norm}")


def _validate_edit(cfg: ReAtCoConfig, k: int, edit: EditConfig, inversion_steps: int) -> None:
    p = f"edits[{k}]"
    require(bool(_SAFE_NAME.match(edit.name)), f"{p}.name",
             f"{edit.name!r} is not a safe folder name: use letters, digits, '.', '_' or '-' (not starting with '.' or '-')")
    require(bool(edit.prompt.strip()), f"{p}.prompt", "is empty; write the edited prompt")
    for j, obj in enumerate(edit.objects):
        q = f"{p}.objects[{j}]"
        validate_object(obj, q)
        if obj.source is not None:
            validate_source(obj.source, cfg.video, cfg.model.pretrained, f"{q}.source")
    merged = edit_config(cfg, edit)
    if edit.sampling:
        validate_sampling(merged.sampling, f"{p}.sampling")
        require(merged.sampling.steps == inversion_steps, f"{p}.sampling.steps",
                 f"must equal the inversion steps ({inversion_steps}): the inversion trajectory pairs with the "
                 "sampling steps; change sampling.steps at the top level instead")
    if edit.rad:
        validate_rad(merged.rad, merged.sampling.steps, f"{p}.rad")
    if edit.irjs:
        validate_irjs(merged.irjs, f"{p}.irjs")
    if edit.window:
        validate_window(merged.window, f"{p}.window")
    if merged.irjs.enabled and not edit.objects:
        raise ConfigError(f"{p}.objects", "is empty while irjs.enabled is true, so the whole frame would be kept "
                          f"from the source; add objects or set {p}.irjs.enabled=false")


def validate(cfg: ReAtCoConfig, check_paths: bool = True) -> None:
    """Check every value; raise ConfigError naming the first bad field and the fix.

    Region geometry (boxes inside the frame, mask frame counts) is checked by regions.py, word
    presence by tokens.py. check_paths=False skips the existence of input files."""
    check_finite_values(config_to_dict(cfg))
    _validate_model(cfg.model, check_paths)
    _validate_video(cfg.video, cfg, check_paths)
    validate_tune(cfg.tune)
    validate_sampling(cfg.sampling, "sampling")
    n_train = train_timesteps(cfg.model.pretrained)
    require(cfg.sampling.steps <= n_train, "sampling.steps",
            f"{cfg.sampling.steps} is more than the scheduler's {n_train} training steps (model.pretrained's "
            f"scheduler); use at most {n_train} (50 is usual)")
    if cfg.inversion.steps is not None:
        at_least(cfg.inversion.steps, 1, "inversion.steps", " (or null for sampling.steps)")
        require(cfg.inversion.steps == cfg.sampling.steps, "inversion.steps",
                 f"must equal sampling.steps ({cfg.sampling.steps}) so the trajectory pairs with the sampling steps; "
                 "or leave it null")
    at_least(cfg.inversion.guidance_scale, 1.0, "inversion.guidance_scale", " (1.0 = no guidance)")
    at_least(cfg.inversion.fixed_point_iters, 0, "inversion.fixed_point_iters", " (0 = Euler)")
    validate_rad(cfg.rad, cfg.sampling.steps, "rad")
    validate_irjs(cfg.irjs, "irjs")
    validate_window(cfg.window, "window")
    require(bool(cfg.output_dir), "output_dir", "is empty; give a results folder or null for outputs/<config stem>")
    if check_paths:
        _writable_folder(cfg.output_dir, "output_dir")
        for name, folder in (("cache_dir", cfg.cache_dir), ("tune.output_dir", cfg.tune.output_dir),
                             ("inversion.cache_dir", cfg.inversion.cache_dir)):
            if folder:
                _writable_folder(folder, name)
    inversion_steps = cfg.inversion.steps or cfg.sampling.steps
    seen: Dict[str, int] = {}
    for k, edit in enumerate(cfg.edits):
        _validate_edit(cfg, k, edit, inversion_steps)
        require(edit.name not in seen, f"edits[{k}].name",
                 f"{edit.name!r} is already the name of edits[{seen.get(edit.name)}]; edit names must be unique")
        seen[edit.name] = k


__all__ = [
    "ModelConfig", "VideoConfig", "TuneConfig", "InversionConfig", "SamplingConfig", "RADConfig",
    "IRJSConfig", "WindowConfig", "SourceRegionConfig", "ObjectConfig", "EditConfig", "ReAtCoConfig",
    "config_to_dict", "edit_config", "validate", "section_settings", "validate_rad", "validate_irjs", "validate_window",
    "validate_tune", "validate_sampling", "validate_object", "region_kind", "check_attention_cell_px", "object_settings",
    "REGION_KEYS",
]
