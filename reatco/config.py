"""Typed configuration: commented dataclasses loaded from YAML with OmegaConf.

A config file may name another with `base_config:` (a path relative to the file); the base is
loaded first (recursively) and the file is merged over it. Overrides use OmegaConf's dotlist
form (`sampling.seed=7`, `edits.0.prompt=...`). Unknown keys are rejected with a suggestion,
wrong types and bad values with a `ConfigError` naming the field — all before any model loads.

One rule for relative paths: a path written in a YAML file is relative to that file's folder
(made absolute on loading): `video.path`, object `mask`s and `boxes_file`s, the output folders
(`output_dir`, `cache_dir`, `tune.output_dir`, `inversion.cache_dir`), and `model.pretrained` /
`model.tuned_unet` when such a folder exists (otherwise they are hub ids). A path given on the
command line (`--output_dir`, `--set key=path`) or from Python is relative to the working
directory, as any command-line path; a folder left null gets its default there
(`outputs/<config file stem>`).

A local model folder may carry its own defaults (`reatco_defaults.json`, model_defaults.py): they
take the place of the library's for every setting that no file and no override sets.
"""

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

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
class RADConfig:
    """Re-Attentional Diffusion: steer each word's cross-attention into its region."""

    enabled: bool = True
    # RAD updates the latent on the first max_update_steps denoising steps only.
    max_update_steps: int = 25
    # α_i = step_size · sqrt(linspace(step_size_range[0], step_size_range[1], steps)[i]).
    step_size: float = 20.0
    step_size_range: List[float] = field(default_factory=lambda: [1.0, 0.5])
    # The RAD terms are means over the frames of one pass, so a pass of F frames gives each frame
    # 1/F of the push. The official α was set on passes of 4 frames (its sliding windows): α is
    # multiplied by (frames in the pass) / calibration_frames, so that each frame gets what the
    # official 4-frame windows give it whatever the pass holds (a whole clip, any window size),
    # and 4-frame windows run exactly the official numerics. null: no scaling (the push per frame
    # then falls as 1/F with the frames per pass).
    calibration_frames: Optional[int] = 4
    # Softmax temperature over the text tokens (attention × temperature).
    temperature: float = 100.0
    # How a cell's attention is spread over the text tokens: softmax (official, × temperature)
    # | share (attention / its sum over the kept tokens; for models whose EOT/padding sink holds
    # nearly all attention, where the softmax of the tiny rest is flat).
    token_normalization: str = "softmax"
    # How a word of several tokens combines their maps: sum (the word's share of the text
    # attention, ≤ 1 like a single token's) | mean (at most 1/k for k tokens, so the refinement
    # thresholds 0.5 and 0.8 are out of reach of a phrase or a split word).
    word_tokens: str = "sum"
    # 3-D Gaussian smoothing of the word maps over frames × h × w.
    smoothing: bool = True
    smoothing_kernel: int = 3
    smoothing_sigma: float = 0.5
    # K of the top-K means: this fraction of the inside (or outside) area.
    top_k_ratio: float = 0.2
    # How K is counted: truncate (official: int(top_k_ratio · area), at least 1 where the
    # official gives 0 and a NaN) | round (max(1, round(top_k_ratio · area)), halves up).
    top_k_rounding: str = "truncate"
    # How a box becomes cells of a grid (the RAD attention grid, and the latent grid of IRJS and
    # start_in_regions): round (official: each coordinate to round(b / cell), half to even; x
    # scaled by the width ratio) | coverage (the rows and columns the box covers at least half of).
    # Either keeps the cell of the box centre where an axis would be left empty.
    box_grid: str = "round"
    # False: softmax over every token but SOT and the last (official code); True: prompt tokens only.
    normalize_eot: bool = False
    # {step index: threshold}: at these steps repeat the update until every word's inner
    # attention reaches the threshold (Attend-and-Excite style).
    refinement_thresholds: Dict[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    max_refinement_iters: int = 20
    # How refinement runs: official (the official control flow exactly: steps on the worst word's
    # inner term, the stop test reads the loss measured before the latest step, and the update
    # after refinement takes fresh inner terms with the outer terms of the pre-refinement pass,
    # whose gradient is zero) | full (every step on the whole fresh RAD loss, the stop test and
    # the final update read the latest pass) | max_inner (as full, stepping on the worst word's
    # inner term).
    refinement: str = "official"
    # Trade compute for memory in the RAD forward (which keeps its graph).
    gradient_checkpointing: bool = False
    # Stop the RAD forward after the last recorded layer (its output is not needed).
    early_stop: bool = True
    # Anchoring (not in the paper): after the denoising step at each of these fractions of the
    # steps (step index int(ratio × steps), as diffusers' cutoff_step_ratio), every frame of an
    # object takes the latents of its region in the frame where its word holds the most attention
    # at that step, moved with the region (reatco/region_noise.py: anchor_object_latents). A model
    # may leave an object out of single frames while drawing it in the others; from that step on
    # every frame develops it. A later fraction anchors again, from the frame that holds the object
    # best by then (an early anchor frame the model went on to leave empty is replaced). It steers
    # by attention as RAD does and is off with RAD. []: off (the paper).
    anchor_step_ratios: List[float] = field(default_factory=list)
    # Wan only: the transformer blocks whose cross-attention (attn2) RAD reads, in each expert.
    # null: blocks num_layers // 4 … num_layers // 2 − 1 (Wan 2.1 1.3B's 30 blocks: 7…14; 14B's 40:
    # 10…19), a first guess: which blocks work best is to be measured on the trained shapes DiT
    # (issue "The shapes world on a DiT"). The RAD forward stops after the last of them.
    blocks: Optional[List[int]] = None


@dataclass
class IRJSConfig:
    """Invariant Region Joint Sampling: keep everything outside the regions from the source."""

    # false for edits that must change the background.
    enabled: bool = True
    # before_step (official code: blend x_t before the UNet) | after_step (paper: blend x_{t-1}).
    placement: str = "before_step"
    # noise (source latents forward-noised with seeded noise) | inversion (DDIM-inversion trajectory).
    source: str = "noise"
    # With temporal windows and placement before_step, source noise: per_window (official: a fresh
    # draw for each window, so overlapping windows see different noise) | per_step (one draw per
    # step shared by every window). The same for a whole-clip pass.
    noise: str = "per_window"
    # Soft edge of the blend mask, in latent cells (0 = hard edge).
    feather: int = 0
    # edit (plain VAE decode) | source: decode the edit with the normalisation statistics the VAE
    # decoder's GroupNorm layers had for the source frames, so that the edit inside the regions
    # does not shift the colours of the whole frame (reatco/decoding.py).
    decode_statistics: str = "edit"
    # edit (every pixel is the decoded edit) | source: outside the regions' latent cells (the cells
    # IRJS keeps from the source), the pixels are the source latents' own decode. The decoder's
    # receptive field carries the edit a few pixels across every region edge; IRJS keeps those
    # latents, so their pixels are the source's (reatco/decoding.py).
    decode_outside: str = "edit"


@dataclass
class WindowConfig:
    """Resource-friendly mode: denoise overlapping temporal windows and average them."""

    # Frames per window; null (or ≥ n_frames) = the whole clip in one pass.
    size: Optional[int] = None
    stride: int = 1


@dataclass
class SourceRegionConfig:
    """Where an object is in the source video, found instead of typed (reatco/region_finding.py,
    reatco/region_detector.py): per-frame boxes (or masks) of one instance, tracked over frames."""

    # The word of the source prompt (video.prompt) naming the object the edited word replaces;
    # found from the model's own cross-attention on the source clip. Null when `detector` is set.
    word: Optional[str] = None
    # null: the word occurs once in the source prompt; k: its k-th occurrence (1-based).
    occurrence: Optional[int] = None
    # An open-vocabulary detector (hub id or folder of OWL-ViT / OWLv2, e.g.
    # google/owlvit-base-patch32) used instead of the attention, with the text `query`.
    detector: Optional[str] = None
    query: Optional[str] = None
    # A video object tracker instead (reatco/region_trackers.py): sam3 (a text `query` → every
    # instance, tracked) | sam2 (a `box` or a click `point` on `frame` → that object, tracked).
    tracker: Optional[str] = None
    # The tracker's weights: a hub id or local folder; null: facebook/sam3 | facebook/sam2.1-hiera-large.
    model: Optional[str] = None
    # sam2: [x1, y1, x2, y2] or a click [x, y] in pixels of the working size (video.width × height),
    # on the clip's frame `frame` (0-based).
    box: Optional[List[float]] = None
    point: Optional[List[float]] = None
    frame: int = 0
    # Detector or tracker: keep instances scoring at least this (VISOR's OWL-ViT threshold: 0.1).
    score: float = 0.1
    # Which instance when several are found: largest | left | right | top | bottom (by mean
    # centre over the frames) | all (the box around every instance) | k ≥ 1 (the k-th counted
    # from the `order` side).
    instance: Any = "largest"
    # Where instance k counts from: left | right | top | bottom.
    order: str = "left"
    # Pixels added around the found object on every side.
    margin: float = 0.0
    # boxes (per-frame boxes) | mask (per-frame masks of the found blobs or tracked masks).
    # null: mask for a tracker, boxes otherwise.
    region: Optional[str] = None
    # Attention: the word's seed blobs are where its map is ≥ threshold × the frame's peak.
    threshold: float = 0.5
    # Attention: a seed grows over the pixels whose features (the UNet's finest features and the
    # source colours, each scaled to unit RMS over the frame, the colours then with colour_weight
    # times the features' say) have cosine ≥ similarity with the seed's.
    similarity: float = 0.6
    colour_weight: float = 1.0
    # Attention: noise levels (scheduler timesteps) the source clip is read at, averaged.
    timesteps: List[int] = field(default_factory=lambda: [50, 150])
    # Attention: pixels per cell of the attention level read; null: one level finer than RAD's
    # when the model has one (SD: 16), else RAD's own.
    attention_cell_px: Optional[int] = None
    # Seeds the forward noise of the attention passes.
    seed: int = 0


@dataclass
class ObjectConfig:
    """A word of interest of the edit prompt and where its object must appear (one region kind)."""

    # A word of the edit prompt (multi-token words use all their tokens).
    word: str = ""
    # null: the word occurs once in the prompt; k: its k-th occurrence (1-based).
    occurrence: Optional[int] = None
    # [x1, y1, x2, y2] in pixels of the working resolution, the same every frame.
    box: Optional[List[float]] = None
    # One box per frame (a list) or keyframes {frame index: box}, interpolated in between.
    boxes: Optional[Any] = None
    # A PNG (every frame) or a folder of per-frame PNGs; white = object.
    mask: Optional[str] = None
    # A JSON or CSV of per-frame boxes (trackers' MOT CSV, {"boxes": {name: [...]}}, or an
    # edit's own regions.json); see reatco/region_files.py.
    boxes_file: Optional[str] = None
    # Which object of boxes_file (its name or id); null when the file holds one object.
    track: Optional[Any] = None
    # Found in the source video instead: {word: <source prompt word>} or {detector: ..., query: ...}.
    source: Optional[SourceRegionConfig] = None


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
# Mappings that are values, not sub-configs: a later file or override replaces them whole.
_ATOMIC_KEYS = {"refinement_thresholds", "boxes"}
_BASE_KEY = "base_config"

# ----------------------------------------------------------------------------- schema walking


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _field_types(cls) -> Dict[str, Any]:
    """Field name -> type, with an edit's partial sections typed by the section they override."""
    hints = typing.get_type_hints(cls)
    return {f.name: f.metadata.get("partial", hints[f.name]) for f in fields(cls)}


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _unknown_key(path: str, key, cls, extra: Sequence[str] = ()) -> ConfigError:
    names = list(_field_types(cls)) + list(extra)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f"did you mean {_join(path, close[0])!r}? " if close else ""
    return ConfigError(_join(path, key), f"unknown key; {hint}valid keys here: {', '.join(names)}")


def _child_type(tp, key, path: str):
    """Type of `key` inside a node of type `tp` (Any where the schema does not say)."""
    tp = _unwrap_optional(tp)
    if is_dataclass(tp):
        types = _field_types(tp)
        if key not in types:
            raise _unknown_key(path, key, tp)
        return types[key]
    origin = typing.get_origin(tp)
    if origin in (list, List):
        if not isinstance(key, int):
            raise ConfigError(path, f"is a list: use an index (e.g. {path}.0), not {key!r}")
        return typing.get_args(tp)[0]
    if origin in (dict, Dict):
        return typing.get_args(tp)[1]
    return Any


def check_known_keys(node, tp, path: str = "") -> None:
    """Reject keys the schema does not have, with the field path and a suggestion."""
    tp = _unwrap_optional(tp)
    if is_dataclass(tp) and isinstance(node, dict):
        for key, value in node.items():
            check_known_keys(value, _child_type(tp, key, path), _join(path, key))
    elif typing.get_origin(tp) in (list, List) and isinstance(node, list):
        for i, item in enumerate(node):
            check_known_keys(item, typing.get_args(tp)[0], _join(path, i))


# ----------------------------------------------------------------------------- loading


def check_shapes(node, tp, path: str = "") -> None:
    """Sections must be mappings and lists lists, before OmegaConf types them: its own message
    ("Merge error: int is not a subclass of RADConfig") names neither the section nor the fix."""
    tp = _unwrap_optional(tp)
    if node is None:
        return
    if is_dataclass(tp):
        if not isinstance(node, dict):
            what = "list" if isinstance(node, list) else type(node).__name__
            raise ConfigError(path or "config", f"is a section of settings: write it as a mapping (key: value lines "
                                                f"under `{path.rsplit('.', 1)[-1] or 'config'}:`), got {_short(node)} ({what})")
        types = _field_types(tp)
        for key, value in node.items():
            if key in types:
                check_shapes(value, types[key], _join(path, key))
    elif typing.get_origin(tp) in (list, List):
        if isinstance(node, dict):
            item = typing.get_args(tp)[0]
            example = " (- name: ..., prompt: ..., objects: [...])" if item is EditConfig else ""
            raise ConfigError(path, f"is a list: write its entries as `- ...` items{example}, got a mapping "
                                    f"with keys {', '.join(map(str, list(node)[:5]))}")
        if isinstance(node, list):
            for i, item in enumerate(node):
                check_shapes(item, typing.get_args(tp)[0], _join(path, i))


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _merge(base: dict, over: dict) -> dict:
    """`over` merged onto `base`: mappings recursively, lists and atomic mappings replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _ATOMIC_KEYS:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_local(value) -> bool:
    return isinstance(value, str) and value != "" and "${" not in value


# (section or "" for the top level, key): the folders a run writes into.
_OUTPUT_KEYS = (("", "output_dir"), ("", "cache_dir"), ("tune", "output_dir"), ("inversion", "cache_dir"))


def _resolve_paths(raw: dict, folder: Path) -> None:
    """Make a file's relative input paths absolute, taken from the file's own folder."""
    def absolute(p: str) -> str:
        p = os.path.expanduser(p)
        return p if os.path.isabs(p) else os.path.abspath(folder / p)

    video = raw.get("video")
    if isinstance(video, dict) and _is_local(video.get("path")):
        video["path"] = absolute(video["path"])
    # output folders too: every path a YAML file writes is relative to that file (docs: one rule)
    for section, key in _OUTPUT_KEYS:
        node = raw.get(section) if section else raw
        if isinstance(node, dict) and _is_local(node.get(key)):
            node[key] = absolute(node[key])
    model = raw.get("model")
    if isinstance(model, dict):
        for key in ("pretrained", "tuned_unet"):
            value = model.get(key)
            if _is_local(value) and not os.path.isabs(value) and (folder / value).exists():
                model[key] = absolute(value)
    for k, edit in enumerate(raw.get("edits") or []):
        for j, obj in enumerate((edit.get("objects") or []) if isinstance(edit, dict) else []):
            for key in ("mask", "boxes_file"):
                if isinstance(obj, dict) and _is_local(obj.get(key)):
                    obj[key] = absolute(obj[key])
            source = obj.get("source") if isinstance(obj, dict) else None
            if isinstance(source, dict):
                _source_alias(source, f"edits[{k}].objects[{j}].source")
                for key in ("model", "detector"):  # weights folders beside the config; hub ids stay
                    value = source.get(key)
                    if _is_local(value) and not os.path.isabs(value) and (folder / value).exists():
                        source[key] = absolute(value)


def _source_alias(source: dict, field_: str) -> None:
    """`as: box | boxes | mask` (the issue's and the field's spelling; `as` is a Python keyword, so
    the schema's field is `region`) → `region: boxes | mask`."""
    if "as" not in source:
        return
    value = source.pop("as")
    if "region" in source:
        raise ConfigError(f"{field_}.as", "give either `as` or `region` (the same setting), not both")
    source["region"] = {"box": "boxes"}.get(value, value)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError("config", f"{path} does not exist")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors come in several types
        raise ConfigError("config", f"{path} is not valid YAML: {err}") from err
    raw = OmegaConf.to_container(node, resolve=False)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold a mapping of sections (model:, video:, edits:, ...)")
    return raw


def _load_layers(path: Path, chain: tuple = ()) -> List[dict]:
    """A YAML file and its base_config chain, base first, each with its paths resolved."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(_BASE_KEY, f"inheritance cycle: {cycle}")
    raw = _read_yaml(path)
    base = raw.pop(_BASE_KEY, None)
    _resolve_paths(raw, path.parent)
    if base is None:
        return [raw]
    if not isinstance(base, str) or not base:
        raise ConfigError(_BASE_KEY, f"in {path}: must be a path to a YAML file, got {base!r}")
    base_path = path.parent / os.path.expanduser(base)
    if not base_path.is_file():
        raise ConfigError(_BASE_KEY, f"in {path}: {base_path} does not exist (base_config is relative to the file)")
    return _load_layers(base_path, chain + (path,)) + [raw]


def _with_model_defaults(layers: List[dict], overrides: Sequence[str]) -> dict:
    """Merge the layers, apply the overrides, and fill in the model folder's own defaults
    (reatco_defaults.json, model_defaults.py) for every setting that no layer sets, where a layer
    that writes out the library's defaults in full (configs/base.yaml) sets nothing."""
    from .model_defaults import read_model_defaults

    raw: dict = {}
    for layer in layers:
        raw = _merge(raw, layer)
    raw.pop(_BASE_KEY, None)
    for item in overrides:
        _apply_override(raw, item)
    check_shapes(raw, ReAtCoConfig)
    pretrained = (raw.get("model") or {}).get("pretrained", ModelConfig.pretrained)
    model_defaults = read_model_defaults(pretrained, local_only=True) if _is_local(pretrained) else {}
    if not model_defaults:
        return raw
    library = config_to_dict(ReAtCoConfig())
    explicit = [layer for layer in layers if layer != library]
    for item in overrides:  # an override is one more explicit layer: `rad.step_size=3` or `rad={step_size: 3}`
        key, _, text = item.partition("=")
        parts = _split_key(key.strip())
        value = _parse_value(text, _child_type(ReAtCoConfig, parts[0], "")) if len(parts) == 1 else None
        explicit.append({parts[0]: value if isinstance(value, dict) else {}} if len(parts) == 1 else {parts[0]: {parts[1]: None}})
    for section, values in model_defaults.items():
        for key, value in values.items():
            if not any(isinstance(layer.get(section), dict) and key in layer[section] for layer in explicit):
                raw.setdefault(section, {})[key] = copy.deepcopy(value)
    return raw


def _split_key(key: str) -> List[Any]:
    """`edits.0.prompt` or `edits[0].prompt` -> ['edits', 0, 'prompt']."""
    parts = []
    for part in re.sub(r"\[(\d+)\]", r".\1", key).split("."):
        if part == "":
            raise ConfigError(key, "malformed override key; write e.g. sampling.seed=7 or edits.0.prompt=...")
        parts.append(int(part) if part.isdigit() else part)
    return parts


def _parse_value(text: str, tp, key: str = "value"):
    """Text of an override -> value: verbatim for text fields, YAML otherwise."""
    optional = _unwrap_optional(tp) is not tp
    tp = _unwrap_optional(tp)
    if tp is str:
        if text in ("null", "~") or (optional and text == ""):
            return None
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
    except Exception as err:  # yaml and OmegaConf raise several types
        raise ConfigError(key, f"cannot parse the value {text!r}: {str(err).splitlines()[0]}; "
                               "quote text, write lists as [a, b] and mappings as {k: v}") from None


def _overridden(old, new, key):
    """`section={a: 1}` sets a, keeping the section's other values (as OmegaConf's dotlist does)."""
    if isinstance(old, dict) and isinstance(new, dict) and key not in _ATOMIC_KEYS:
        return _merge(old, new)
    return new


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(item, "an override is key=value, e.g. sampling.seed=7 or edits.0.prompt=...")
    if key == _BASE_KEY:
        raise ConfigError(key, "base_config cannot be overridden; put it in the YAML file")
    parts = _split_key(key)
    tp, node, path = ReAtCoConfig, raw, ""
    for i, part in enumerate(parts):
        tp = _child_type(tp, part, path)
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise ConfigError(_join(path, part), f"index out of range: {path} has {len(node)} entries")
            if last:
                node[part] = _overridden(node[part], _parse_value(text, tp, key), part)
            node = node[part]
        else:
            if last:
                node[part] = _overridden(node.get(part), _parse_value(text, tp, key), part)
            elif isinstance(part, int):
                raise ConfigError(_join(path, part), f"{path or 'config'} is not a list")
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = [] if typing.get_origin(_unwrap_optional(tp)) in (list, List) else {}
                node = node[part]
        path = _join(path, part)


def _omegaconf_error(err: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    full_key = getattr(err, "full_key", None) or ""
    message = (getattr(err, "msg", None) or str(err)).split("\n")[0]
    message = f"wrong type or value: {message}"
    return ConfigError(_join(prefix, full_key) if prefix and full_key else (full_key or prefix or "config"), message)


def _int_keys(node, tp) -> None:
    """Digit-string keys of integer-keyed mappings (refinement_thresholds: {"0": 0.9}, as JSON
    and quoted YAML keys give them) → ints, in place, wherever the schema says Dict[int, …]."""
    tp = _unwrap_optional(tp)
    if is_dataclass(tp) and isinstance(node, dict):
        types = _field_types(tp)
        for key, value in node.items():
            if key in types:
                _int_keys(value, types[key])
    elif typing.get_origin(tp) in (list, List) and isinstance(node, list):
        for item in node:
            _int_keys(item, typing.get_args(tp)[0])
    elif typing.get_origin(tp) in (dict, Dict) and isinstance(node, dict) and typing.get_args(tp)[:1] == (int,):
        for key in list(node):
            if isinstance(key, str) and re.fullmatch(r"\s*[+-]?\d+\s*", key) and int(key) not in node:
                node[int(key)] = node.pop(key)


def _typed(cls, raw: dict, prefix: str = ""):
    """Plain dict -> dataclass instance of `cls`, types checked and converted by OmegaConf."""
    _int_keys(raw, cls)
    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), raw)
        _replace_atomic(node, raw, cls)
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        _locate_type_error(cls, raw, prefix)  # raises with the full path when inside a list
        raise _omegaconf_error(err, prefix) from err


def _locate_type_error(cls, raw: dict, prefix: str) -> None:
    """OmegaConf reports keys inside list items without their path: retype item by item."""
    for key, value in raw.items():
        tp = _unwrap_optional(_field_types(cls).get(key, Any))
        if typing.get_origin(tp) in (list, List) and isinstance(value, list):
            item_cls = typing.get_args(tp)[0]
            if is_dataclass(item_cls):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        _typed(item_cls, item, _join(_join(prefix, key), i))
        elif is_dataclass(tp) and isinstance(value, dict):
            _locate_type_error(tp, value, _join(prefix, key))


def _replace_atomic(node, raw: dict, cls) -> None:
    """OmegaConf merges mappings key by key; atomic ones (thresholds) must replace the default."""
    for key, value in raw.items():
        tp = _unwrap_optional(_field_types(cls).get(key, Any))
        if key in _ATOMIC_KEYS and isinstance(value, dict):
            OmegaConf.update(node, key, value, merge=False)
        elif is_dataclass(tp) and isinstance(value, dict):
            _replace_atomic(node[key], value, tp)


def _refuse_interpolation(node, path: str = "") -> None:
    """OmegaConf would resolve `${...}` while typing the config: `${oc.env:TOKEN}` copies an
    environment variable into the saved config.yaml. User configs hold plain values only."""
    if isinstance(node, str) and "${" in node:
        raise ConfigError(path or "config", f"{node!r}: ${{...}} interpolation is not supported in reatco configs "
                          "(${oc.env:...} would copy environment variables into the saved config.yaml); write the value itself")
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_interpolation(value, _join(path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_interpolation(value, _join(path, i))


def _build(layers: List[dict], overrides: Sequence[str], name: str, check_paths: bool) -> ReAtCoConfig:
    if isinstance(overrides, str):
        overrides = [overrides]
    raw = _with_model_defaults(layers, overrides)
    check_known_keys(raw, ReAtCoConfig)
    _refuse_interpolation(raw)
    cfg = _typed(ReAtCoConfig, raw)
    if cfg.output_dir is None:
        cfg.output_dir = os.path.join("outputs", name)
    validate(cfg, check_paths=check_paths)
    return cfg


def load_config(path, overrides: Sequence[str] = (), check_paths: bool = True) -> ReAtCoConfig:
    """Load a YAML config (with its base_config chain), apply overrides, validate.

    Settings that no file and no override sets come from the model folder's
    `reatco_defaults.json` when `model.pretrained` is a local folder that has one, else from the
    library's defaults. check_paths=False skips the existence checks of input files."""
    path = Path(path)
    return _build(_load_layers(path), overrides, path.stem, check_paths)


def pretrained_of(path) -> str:
    """`model.pretrained` of a YAML file and its base_config chain, without validating the rest
    (a LOVEU base config has no video yet): what eval_loveu.py checks before running edits."""
    raw: dict = {}
    for layer in _load_layers(Path(path)):
        raw = _merge(raw, layer)
    model = raw.get("model")
    value = model.get("pretrained") if isinstance(model, dict) else None
    return value if isinstance(value, str) and value else ModelConfig.pretrained


def config_from_dict(d: dict, overrides: Sequence[str] = (), check_paths: bool = True,
                     base_dir=None, name: str = "reatco") -> ReAtCoConfig:
    """Same as load_config for a dict; relative input paths are taken from `base_dir` when given
    (a `base_config` key needs it), output_dir defaults to outputs/<name>."""
    raw = OmegaConf.to_container(OmegaConf.create(d), resolve=False) if not isinstance(d, dict) else copy.deepcopy(d)
    layers = [raw]
    if base_dir is not None:
        folder = Path(base_dir)
        base = raw.pop(_BASE_KEY, None)
        _resolve_paths(raw, folder)
        if base is not None:
            layers = _load_layers(folder / base) + [raw]
    elif raw.get(_BASE_KEY) is not None:
        raise ConfigError(_BASE_KEY, "config_from_dict needs base_dir= to find the base config")
    return _build(layers, overrides, name, check_paths)


# ----------------------------------------------------------------------------- saving


def config_to_dict(cfg) -> dict:
    """A config (or one of its sections) as plain dicts and lists."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    if not is_dataclass(cfg):
        raise TypeError(f"config_to_dict expects a config dataclass, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def _relative_inputs(d: dict, folder: Path) -> dict:
    """The input paths of a config dict made relative to `folder` where they can be (the way
    load_config reads them: from the file's own folder); hub ids and other drives stay as they are."""
    def rel(p):
        if not isinstance(p, str) or not os.path.isabs(p) or not os.path.exists(p):
            return p
        try:
            return os.path.relpath(p, folder.resolve())
        except ValueError:  # another drive
            return p

    d["video"]["path"] = rel(d["video"]["path"])
    d["model"]["pretrained"] = rel(d["model"]["pretrained"])
    d["model"]["tuned_unet"] = rel(d["model"]["tuned_unet"])
    for edit in d["edits"]:
        for obj in edit["objects"]:
            obj["mask"] = rel(obj["mask"])
            obj["boxes_file"] = rel(obj.get("boxes_file"))
            if obj.get("source"):
                obj["source"]["model"] = rel(obj["source"]["model"])
    return d


def save_config(cfg, path, relative_inputs: bool = False) -> None:
    """Write the resolved config as YAML (atomically); load_config reads it back equal.
    relative_inputs: write the input paths (video, masks, local model folders) relative to the
    file's folder, so that a results folder moved with its inputs still reruns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    for section, key in _OUTPUT_KEYS:  # as they were meant when the run read them (a saved file moves)
        node = data.get(section) if section else data
        if isinstance(node, dict) and _is_local(node.get(key)):
            node[key] = os.path.abspath(os.path.expanduser(node[key]))
    if relative_inputs and "video" in data:
        data = _relative_inputs(data, path.parent)
    text = "# Resolved reatco config: every value, base configs and overrides applied.\n"
    if relative_inputs:
        text += "# Input paths are relative to this file's folder; output folders are absolute.\n"
    text += OmegaConf.to_yaml(OmegaConf.create(data))
    from .files import write_text_atomic

    write_text_atomic(path, text)


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
        changes[section] = _typed(cls, _merge(config_to_dict(getattr(cfg, section)), override), where)
    return dataclasses.replace(copy.deepcopy(cfg), **changes)


# ----------------------------------------------------------------------------- validation

_DTYPES = ("auto", "float32", "float16", "bfloat16")
_AUTOCASTS = ("none", "bf16")
BACKBONES = ("auto", "unet", "wan")
_MIXED = ("auto", "no", "fp16", "bf16")
_PLACEMENTS = ("before_step", "after_step")
_SOURCES = ("noise", "inversion")
STARTS = ("inversion", "noise", "tracked_noise")
_DECODE_STATISTICS = ("edit", "source")
_DECODE_OUTSIDE = ("edit", "source")
REFINEMENTS = ("official", "full", "max_inner")
TOP_K_ROUNDINGS = ("truncate", "round")
BOX_GRIDS = ("round", "coverage")
IRJS_NOISE = ("per_window", "per_step")
_TOKEN_NORMALIZATIONS = ("softmax", "share")
_WORD_TOKENS = ("mean", "sum")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _require(ok: bool, field_: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_, message)


def _choice(value, options, field_: str) -> None:
    _require(value in options, field_, f"{value!r} is not one of {', '.join(options)}")


def _at_least(value, low, field_: str, what: str = "") -> None:
    _require(value is not None and value >= low, field_, f"must be ≥ {low}{what}, got {value}")


INT64_MAX = 2**63 - 1


def _check_finite(node, path: str = "") -> None:
    """Every number of the config (sections, edits, boxes, thresholds) must be finite: inf passes
    `≥` checks and NaN fails none, and either turns the edit into black frames."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(path or "config", f"must be a finite number, got {node}")
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, _join(path, key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_finite(value, _join(path, i))


def _seed(value, field_: str) -> None:
    _require(value is not None and 0 <= value <= INT64_MAX, field_, f"must be in [0, 2**63 − 1], got {value}")


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
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".reatco-write-check-", dir=probe))
    except OSError as err:
        raise ConfigError(field_, f"{p} cannot be written ({err.strerror or err} in {probe}); choose another folder") from None


def validate_rad(rad: RADConfig, steps: Optional[int], p: str = "rad") -> None:
    """Check a RAD section (ConfigError naming `p`.field). `steps`: the sampling steps the
    refinement thresholds must fall in, or None to leave that check out."""
    _at_least(rad.max_update_steps, 0, f"{p}.max_update_steps")
    if rad.blocks is not None:  # against the model's block count when it loads (Wan's resolve_rad_blocks)
        _require(len(rad.blocks) > 0 and all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in rad.blocks),
                 f"{p}.blocks", f"must be a non-empty list of transformer block indices ≥ 0, or null, got {list(rad.blocks)}")
    _at_least(rad.step_size, 0, f"{p}.step_size")
    r = rad.step_size_range
    _require(len(r) == 2 and all(x > 0 for x in r), f"{p}.step_size_range",
             f"must be two positive numbers [start, end] (default [1.0, 0.5]), got {r}")
    if rad.calibration_frames is not None:
        _at_least(rad.calibration_frames, 1, f"{p}.calibration_frames", " (default 4, the official window; null: no scaling)")
    _require(rad.temperature > 0, f"{p}.temperature", f"must be > 0 (default 100), got {rad.temperature}")
    _require(rad.smoothing_kernel >= 1 and rad.smoothing_kernel % 2 == 1, f"{p}.smoothing_kernel",
             f"must be an odd number ≥ 1 (default 3), got {rad.smoothing_kernel}")
    _require(rad.smoothing_sigma > 0, f"{p}.smoothing_sigma", f"must be > 0 (default 0.5), got {rad.smoothing_sigma}")
    _require(0 < rad.top_k_ratio <= 1, f"{p}.top_k_ratio", f"must be in (0, 1] (default 0.2), got {rad.top_k_ratio}")
    _choice(rad.top_k_rounding, TOP_K_ROUNDINGS, f"{p}.top_k_rounding")
    _choice(rad.box_grid, BOX_GRIDS, f"{p}.box_grid")
    for step, threshold in rad.refinement_thresholds.items():
        _require(isinstance(step, int) and not isinstance(step, bool), f"{p}.refinement_thresholds.{step}",
                 f"keys are denoising step indices (integers), got {step!r}")
        _require(steps is None or 0 <= step < steps, f"{p}.refinement_thresholds.{step}",
                 f"step index must be in [0, {steps}) (sampling.steps = {steps}); set rad.refinement_thresholds "
                 "to a table of earlier steps, e.g. {0: 0.05, 5: 0.5}")
        _require(step >= 0, f"{p}.refinement_thresholds.{step}", "step indices start at 0")
        _require(isinstance(threshold, (int, float)) and 0 <= threshold <= 1, f"{p}.refinement_thresholds.{step}",
                 f"threshold must be in [0, 1], got {threshold}")
    _at_least(rad.max_refinement_iters, 0, f"{p}.max_refinement_iters")
    _choice(rad.refinement, REFINEMENTS, f"{p}.refinement")
    _choice(rad.token_normalization, _TOKEN_NORMALIZATIONS, f"{p}.token_normalization")
    _choice(rad.word_tokens, _WORD_TOKENS, f"{p}.word_tokens")
    _require(isinstance(rad.anchor_step_ratios, (list, tuple)), f"{p}.anchor_step_ratios",
             f"must be a list of fractions of the steps (e.g. [0.2, 0.4]; [] is off), got {rad.anchor_step_ratios!r}")
    for k, ratio in enumerate(rad.anchor_step_ratios):
        _require(isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 <= ratio < 1,
                 f"{p}.anchor_step_ratios.{k}",
                 f"must be a fraction of the steps in [0, 1) (e.g. [0.2, 0.4]; [] is off), got {ratio!r}")


def validate_irjs(irjs: IRJSConfig, p: str = "irjs") -> None:
    """Check an IRJS section (ConfigError naming `p`.field)."""
    _choice(irjs.placement, _PLACEMENTS, f"{p}.placement")
    _choice(irjs.source, _SOURCES, f"{p}.source")
    _choice(irjs.noise, IRJS_NOISE, f"{p}.noise")
    _at_least(irjs.feather, 0, f"{p}.feather", " latent cells")
    _choice(irjs.decode_statistics, _DECODE_STATISTICS, f"{p}.decode_statistics")
    _choice(irjs.decode_outside, _DECODE_OUTSIDE, f"{p}.decode_outside")


def validate_sampling(s: SamplingConfig, p: str = "sampling") -> None:
    """Check a sampling section (ConfigError naming `p`.field; `p` = "": the pipeline's own
    arguments, guidance_scale and start_in_regions; steps is then num_inference_steps)."""
    _at_least(s.steps, 1, _join(p, "steps") if p else "num_inference_steps")
    _at_least(s.guidance_scale, 1.0, _join(p, "guidance_scale"), " (1.0 = no guidance)")
    _seed(s.seed, _join(p, "seed"))
    _choice(s.start_in_regions, STARTS, _join(p, "start_in_regions"))


def check_attention_cell_px(value, field_: str = "model.attention_cell_px") -> None:
    """The RAD attention cell in pixels (the config's model.attention_cell_px, the pipeline's
    attention_cell_px)."""
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, field_,
             f"must be ≥ 1 px (32 for SD v1.x, 8 for the shapes model), got {value!r}")


def validate_window(w: WindowConfig, p: str = "window") -> None:
    """Check a window section (ConfigError naming `p`.field)."""
    _at_least(w.stride, 1, f"{p}.stride")
    if w.size is not None:
        _at_least(w.size, 1, f"{p}.size", " (or null for the whole clip)")
        _require(w.stride <= w.size, f"{p}.stride", f"{w.stride} is larger than {p}.size ({w.size}): windows would skip frames")


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
            raise _omegaconf_error(err, where) from err
        if not isinstance(raw, dict):
            raise ConfigError(where or section, f"must be a mapping of {section} settings (or a {cls.__name__}), got {value!r}")
        raw = copy.deepcopy(dict(raw))
    check_known_keys(raw, cls, where)
    _check_finite(raw, where)
    settings = _typed(cls, raw, where)
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
    from .models.checkpoint import CheckpointError, index_shards

    for index in indexes:
        try:
            for shard in index_shards(str(index)):
                target = index.parent / shard
                _require(target.is_file(), field_, f"{index} names the shard {shard!r}, which is not in {index.parent}; "
                                                   "copy the whole UNet folder again")
                _require(target.resolve().parent == index.parent.resolve(), field_,
                         f"{index}: the shard {shard!r} links outside {index.parent}; shards must be files in the folder")
        except CheckpointError as err:
            raise ConfigError(field_, str(err)) from None


def _validate_model(m: ModelConfig, check_paths: bool) -> None:
    _require(bool(m.pretrained), "model.pretrained", "is empty; give a hub id or a folder in Stable Diffusion layout")
    if check_paths and m.tuned_unet is not None:
        _require(os.path.isdir(m.tuned_unet), "model.tuned_unet",
                 f"{m.tuned_unet} is not a folder; give a Tune-A-Video UNet folder or null to tune")
        _check_shard_indexes(m.tuned_unet, "model.tuned_unet")
    check_attention_cell_px(m.attention_cell_px, "model.attention_cell_px")
    check_model_cell(m.attention_cell_px, m.pretrained, "model.attention_cell_px")
    _choice(m.dtype, _DTYPES, "model.dtype")
    _choice(m.autocast, _AUTOCASTS, "model.autocast")
    _choice(m.backbone, BACKBONES, "model.backbone")
    _require(bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", m.device)), "model.device",
             f"{m.device!r} is not one of auto, cpu, cuda, cuda:N, mps")


def _validate_video(v: VideoConfig, cfg: ReAtCoConfig, check_paths: bool) -> None:
    from .video import check_size

    _require(bool(v.path), "video.path", "is required: an mp4 (or avi, mov, ...) file or a folder of jpg/png frames")
    if check_paths:
        _require(os.path.exists(v.path), "video.path",
                 f"{v.path} does not exist; give a video file or a folder of frames (the paper's clips are not "
                 "shipped: data/README.md says where to get them and where they go)")
    if cfg.tune.enabled and cfg.model.tuned_unet is None:
        _require(bool(v.prompt.strip()), "video.prompt", "is empty; describe the source video (tuning uses it)")
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
    _at_least(v.n_frames, 1, "video.n_frames")
    _at_least(v.start_frame, 0, "video.start_frame")
    _at_least(v.frame_stride, 1, "video.frame_stride")
    _at_least(v.fps, 1, "video.fps")


def validate_tune(t: TuneConfig, p: str = "tune") -> None:
    """Check a tune section (ConfigError naming `p`.field)."""
    _at_least(t.steps, 1, f"{p}.steps")
    _require(t.learning_rate > 0, f"{p}.learning_rate", f"must be > 0 (default 3e-5), got {t.learning_rate}")
    _require(len(t.trainable_modules) > 0 and all(t.trainable_modules), f"{p}.trainable_modules",
             "must name at least one module suffix, e.g. [attn1.to_q, attn2.to_q, attn_temp]")
    _seed(t.seed, f"{p}.seed")
    _choice(t.mixed_precision, _MIXED, f"{p}.mixed_precision")
    _at_least(t.batch_size, 1, f"{p}.batch_size")
    _at_least(t.adam_weight_decay, 0, f"{p}.adam_weight_decay")
    _require(t.max_grad_norm > 0, f"{p}.max_grad_norm", f"must be > 0 (default 1.0), got {t.max_grad_norm}")


REGION_KEYS = ("box", "boxes", "mask", "boxes_file", "source")
_INSTANCES = ("largest", "left", "right", "top", "bottom", "all")
_ORDERS = ("left", "right", "top", "bottom")
_SOURCE_REGIONS = ("boxes", "mask")


def _validate_source(src: SourceRegionConfig, cfg: ReAtCoConfig, p: str) -> None:
    if src.tracker is not None:
        _validate_tracker_source(src, cfg, p)
    elif src.detector:
        _require(bool(src.query and src.query.strip()), f"{p}.query", "is empty; a detector needs a text query, e.g. \"a dolphin\"")
        _require(src.word is None, f"{p}.word", "give either word (the model's own attention) or detector + query, not both")
        _require(0 <= src.score <= 1, f"{p}.score", f"must be in [0, 1] (default 0.1), got {src.score}")
    else:
        _require(bool(src.word and src.word.strip()), f"{p}.word",
                 "is empty; name the word of the source prompt (video.prompt) for the object, or set detector + query")
        check_word(src.word, f"{p}.word")
        _require(bool(cfg.video.prompt.strip()), "video.prompt", f"is empty, but {p}.word looks for a word in it")
        _require(src.query is None, f"{p}.query", "is for detector or tracker: set one of them too, or use word")
    if src.tracker is None:
        for key in ("model", "box", "point"):
            _require(getattr(src, key) is None, f"{p}.{key}", "is for a tracker: set tracker (sam2 or sam3) too")
    if src.occurrence is not None:
        _at_least(src.occurrence, 1, f"{p}.occurrence", " (1 = first occurrence; null if the word occurs once)")
    inst = src.instance
    _require((isinstance(inst, int) and not isinstance(inst, bool) and inst >= 1) or inst in _INSTANCES, f"{p}.instance",
             f"{inst!r} is not one of {', '.join(_INSTANCES)} or a number k ≥ 1 (the k-th from the `order` side)")
    _choice(src.order, _ORDERS, f"{p}.order")
    _at_least(src.margin, 0, f"{p}.margin", " px")
    if src.region is not None:
        _choice(src.region, _SOURCE_REGIONS, f"{p}.region")
    _require(0 < src.threshold <= 1, f"{p}.threshold", f"must be in (0, 1] (default 0.5), got {src.threshold}")
    _require(-1 <= src.similarity <= 1, f"{p}.similarity", f"is a cosine, in [-1, 1] (default 0.6), got {src.similarity}")
    _at_least(src.colour_weight, 0, f"{p}.colour_weight")
    _require(len(src.timesteps) > 0 and all(0 <= t < 1000 for t in src.timesteps), f"{p}.timesteps",
             f"must be scheduler timesteps in [0, 1000), e.g. [50, 150], got {src.timesteps}")
    if src.attention_cell_px is not None:
        cell = src.attention_cell_px
        _at_least(cell, 1, f"{p}.attention_cell_px", " px (null: the model's finest level near RAD's)")
        _require(cell & (cell - 1) == 0 and cfg.video.height % cell == 0 and cfg.video.width % cell == 0,
                 f"{p}.attention_cell_px", f"{cell} px must be a power of two that divides video.height and video.width "
                 f"({cfg.video.height}×{cfg.video.width}); null picks the model's own")
        check_model_cell(cell, cfg.model.pretrained, f"{p}.attention_cell_px")


_TRACKERS = ("sam2", "sam3")


def _validate_tracker_source(src: SourceRegionConfig, cfg: ReAtCoConfig, p: str) -> None:
    """A tracker source's own fields; its frame, box and point against the clip are checked by
    region_trackers.check_tracker_prompt once the clip's frame count is known (still before any
    weights load)."""
    _choice(src.tracker, _TRACKERS, f"{p}.tracker")
    _require(src.word is None and src.detector is None, f"{p}.tracker",
             "give one of word (the model's attention), detector + query, or tracker, not several")
    if src.model is not None:
        _require(bool(str(src.model).strip()), f"{p}.model", "is empty; give a hub id or a local folder, or null for the default")
    if src.tracker == "sam3":
        _require(bool(src.query and str(src.query).strip()), f"{p}.query",
                 "is empty; sam3 tracks every instance of a text query, e.g. \"dolphin\" (or use sam2 with a box)")
        for key in ("box", "point"):
            _require(getattr(src, key) is None, f"{p}.{key}", "is for sam2; sam3 finds its instances from `query`")
    else:
        _require(src.query is None, f"{p}.query", "is for sam3; sam2 follows a `box` or a click `point` on `frame`")
        _require((src.box is None) != (src.point is None), f"{p}.box",
                 "sam2 needs exactly one of box [x1, y1, x2, y2] or point [x, y] on `frame`")
        if src.box is not None:
            _require(len(src.box) == 4, f"{p}.box", f"is [x1, y1, x2, y2] in pixels, got {list(src.box)}")
        if src.point is not None:
            _require(len(src.point) == 2, f"{p}.point", f"is a click [x, y] in pixels, got {list(src.point)}")
    _require(not isinstance(src.frame, bool) and isinstance(src.frame, int) and src.frame >= 0, f"{p}.frame",
             f"is the 0-based frame of the clip the box or point is on, got {src.frame!r}")
    _require(0 <= src.score <= 1, f"{p}.score", f"must be in [0, 1] (default 0.1), got {src.score}")
    if cfg.video.n_frames is not None:
        _require(src.frame < cfg.video.n_frames, f"{p}.frame",
                 f"is {src.frame}, but the clip has frames 0–{cfg.video.n_frames - 1} (video.n_frames {cfg.video.n_frames})")
    if src.box is not None and len(src.box) == 4:
        x1, y1, x2, y2 = src.box
        _require(0 <= x1 < x2 <= cfg.video.width and 0 <= y1 < y2 <= cfg.video.height, f"{p}.box",
                 f"{list(src.box)} is not inside the {cfg.video.width}×{cfg.video.height} frame with x1 < x2 and y1 < y2 "
                 "(pixels of video.width × video.height)")
    if src.point is not None and len(src.point) == 2:
        x, y = src.point
        _require(0 <= x < cfg.video.width and 0 <= y < cfg.video.height, f"{p}.point",
                 f"{list(src.point)} is outside the {cfg.video.width}×{cfg.video.height} frame (pixels of video.width × video.height)")


def value_of(obj, name: str, default=None):
    """A setting of a config object or of a dict given from Python: the one place that tells
    the two apart."""
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


# A dict object from Python may give its region ready-made: `region` (a reatco.regions.Region).
_OBJECT_KEYS = tuple(f.name for f in fields(ObjectConfig)) + ("region",)


def validate_object(obj, field_: str = "objects[0]") -> str:
    """One user's object, checked alike wherever it comes from (load_config, the pipeline's
    `objects=`, EditRunner): an ObjectConfig or a dict of its fields; its word, its occurrence,
    exactly one region. Returns the region's kind (box, boxes, mask, boxes_file, source or
    region). Where the word is in the prompt is reatco.tokens' check, the region's geometry
    reatco.regions.parse_region's."""
    if isinstance(obj, dict):
        for key in obj:
            if key not in _OBJECT_KEYS:  # the YAML loader's wording for an unknown key
                raise _unknown_key(field_, key, ObjectConfig, extra=("region",))
    elif not is_dataclass(obj):
        raise ConfigError(field_, f"an object is a mapping (word, occurrence, and one region), got {_short(obj)}")
    word = value_of(obj, "word")
    _require(isinstance(word, str) and bool(word.strip()), f"{field_}.word",
             f"must name a word of the edit prompt, got {word!r}")
    check_word(word, f"{field_}.word")
    occurrence = value_of(obj, "occurrence")
    _require(occurrence is None or (isinstance(occurrence, int) and not isinstance(occurrence, bool) and occurrence >= 1),
             f"{field_}.occurrence", f"must be ≥ 1 (1 = first occurrence; null if the word occurs once), got {occurrence!r}")
    kind = region_kind(obj, field_)
    _require(value_of(obj, "track") is None or value_of(obj, "boxes_file") is not None, f"{field_}.track",
             "names an object of boxes_file; give boxes_file too")
    return kind


def check_word(word: str, field_: str) -> None:
    """A word of interest has a letter or a digit: punctuation and emoji carry no object the
    attention could place (a "," token attends everywhere; "🟢" is byte pieces)."""
    _require(any(ch.isalnum() for ch in word), field_,
             f"{word!r} has no letter or digit: name a word of the prompt for the object (e.g. \"circle\"), "
             "not punctuation or an emoji")


def train_timesteps(pretrained) -> int:
    """The scheduler's training steps of a local model folder (its scheduler_config.json), else
    Stable Diffusion's 1000: sampling and inversion steps cannot exceed them."""
    import json

    path = Path(os.path.expanduser(str(pretrained))) / "scheduler" / "scheduler_config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("num_train_timesteps", 1000)
    except (OSError, ValueError, AttributeError):
        return 1000
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1000


def model_attention_cells(pretrained) -> Optional[List[int]]:
    """The cell sizes (px) of a local model folder's cross-attention layers, from its unet/ and
    vae/ configs without loading weights (the layout models/layers.cross_attention_scales reads
    from the module); None for a hub id or a folder without those files."""
    import json

    folder = Path(os.path.expanduser(str(pretrained)))
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
        down = list(unet["down_block_types"])
        mid = unet.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    cells = {vae_factor * 2 ** i for i, kind in enumerate(down) if "CrossAttn" in str(kind)}
    if mid and "CrossAttn" in str(mid):
        cells.add(vae_factor * 2 ** (len(down) - 1))
    return sorted(cells) or None


def check_model_cell(value, pretrained, field_: str) -> None:
    """An attention cell the model has (checked from its configs when the folder is local)."""
    cells = model_attention_cells(pretrained)
    _require(cells is None or value in cells, field_,
             f"{value} px: the model ({pretrained}) has cross-attention cells of {cells} px only; use one of them")


def region_kind(obj, field_: str = "objects[0]") -> str:
    """Which region an object gives: exactly one of REGION_KEYS (or, from Python, `region`)."""
    given = [n for n in REGION_KEYS + ("region",) if value_of(obj, n) is not None]
    _require(len(given) == 1, field_, f"give exactly one of box, boxes, mask, boxes_file or source (from Python also "
                                      f"region=, a reatco.regions.Region) (got {' and '.join(given) or 'none'})")
    return given[0]


def _validate_edit(cfg: ReAtCoConfig, k: int, edit: EditConfig, inversion_steps: int) -> None:
    p = f"edits[{k}]"
    _require(bool(_SAFE_NAME.match(edit.name)), f"{p}.name",
             f"{edit.name!r} is not a safe folder name: use letters, digits, '.', '_' or '-' (not starting with '.' or '-')")
    _require(bool(edit.prompt.strip()), f"{p}.prompt", "is empty; write the edited prompt")
    for j, obj in enumerate(edit.objects):
        q = f"{p}.objects[{j}]"
        validate_object(obj, q)
        if obj.source is not None:
            _validate_source(obj.source, cfg, f"{q}.source")
    merged = edit_config(cfg, edit)
    if edit.sampling:
        validate_sampling(merged.sampling, f"{p}.sampling")
        _require(merged.sampling.steps == inversion_steps, f"{p}.sampling.steps",
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
    _check_finite(config_to_dict(cfg))
    _validate_model(cfg.model, check_paths)
    _validate_video(cfg.video, cfg, check_paths)
    validate_tune(cfg.tune)
    validate_sampling(cfg.sampling, "sampling")
    n_train = train_timesteps(cfg.model.pretrained)
    _require(cfg.sampling.steps <= n_train, "sampling.steps",
             f"{cfg.sampling.steps} is more than the scheduler's {n_train} training steps (model.pretrained's "
             f"scheduler); use at most {n_train} (50 is usual)")
    if cfg.inversion.steps is not None:
        _at_least(cfg.inversion.steps, 1, "inversion.steps", " (or null for sampling.steps)")
        _require(cfg.inversion.steps == cfg.sampling.steps, "inversion.steps",
                 f"must equal sampling.steps ({cfg.sampling.steps}) so the trajectory pairs with the sampling steps; "
                 "or leave it null")
    _at_least(cfg.inversion.guidance_scale, 1.0, "inversion.guidance_scale", " (1.0 = no guidance)")
    _at_least(cfg.inversion.fixed_point_iters, 0, "inversion.fixed_point_iters", " (0 = Euler)")
    validate_rad(cfg.rad, cfg.sampling.steps, "rad")
    validate_irjs(cfg.irjs, "irjs")
    validate_window(cfg.window, "window")
    _require(bool(cfg.output_dir), "output_dir", "is empty; give a results folder or null for outputs/<config stem>")
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
        _require(edit.name not in seen, f"edits[{k}].name",
                 f"{edit.name!r} is already the name of edits[{seen.get(edit.name)}]; edit names must be unique")
        seen[edit.name] = k


__all__ = [
    "ModelConfig", "VideoConfig", "TuneConfig", "InversionConfig", "SamplingConfig", "RADConfig",
    "IRJSConfig", "WindowConfig", "SourceRegionConfig", "ObjectConfig", "EditConfig", "ReAtCoConfig",
    "load_config", "config_from_dict", "config_to_dict", "save_config", "edit_config", "validate",
    "section_settings", "validate_rad", "validate_irjs", "validate_window", "validate_tune", "validate_sampling",
    "validate_object", "region_kind", "check_attention_cell_px", "value_of", "STARTS", "REGION_KEYS",
]
