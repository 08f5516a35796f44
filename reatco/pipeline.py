"""ReAtCoPipeline: Tune-A-Video editing with Re-Attentional Diffusion (RAD) and Invariant Region
Joint Sampling (IRJS), as a regular `diffusers.DiffusionPipeline`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, logging
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from .backbones.tav import TuneAVideoUNet
from .backbones.tav.backbone import TuneAVideoBackbone
from .backbones.tav.unet import cast_dtype
from .config import IRJSConfig, RADConfig, WindowConfig, check_attention_cell_px, section_settings, validate_object
from .errors import ConfigError, check_finite
from .files import write_json_atomic, write_text_atomic
from .irjs import blend as irjs_ops
from .irjs.blend import InvariantRegion
from .irjs.region_noise import tracked_noise
from .model_defaults import DEFAULTS_FILE, call_defaults, merge_section, read_model_defaults
from .rad.anchoring import anchor_object_latents
from .rad.guidance import AttentionObservations, RADGuidance
from .regions.detector import detect_source_regions
from .regions.finding import find_source_regions
from .regions.objects import EditObject, resolve_objects
from .regions.region import object_masks
from .regions.settings import object_settings
from .tokens import PromptTokens, check_edit_prompt, tokenize_prompt
from .video import check_video_tensor, to_uint8, video_input
from .windows import merge_windows, temporal_windows

logger = logging.get_logger(__name__)


@dataclass
class _Loop:
    """What every window step of one call reads (set once, before the loop)."""

    backbone: Any
    guidance: RADGuidance | None
    invariant: InvariantRegion | None
    use_rad: bool
    pictures: bool  # attention pictures observed on the model call (RAD off)
    anchor_steps: set
    n_windows: int
    cell_px: int
    token_indices: list


@dataclass
class CallSettings:
    """The call's settings after `check_inputs`: defaults filled in, sections validated."""

    prompt: str
    tokens: PromptTokens  # the prompt tokenized once, for everything in the call that reads it
    generator: torch.Generator | None
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str
    start_in_regions: str
    rad: RADConfig
    irjs: IRJSConfig
    window: WindowConfig
    cell_px: int
    callback_tensor_inputs: tuple
    objects: list  # typed: ObjectConfigs (dicts given are typed once, here) or EditObjects


def encode_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The generator the VAE encode samples from: a fresh one seeded with `generator`'s seed.
    The encode never advances the caller's generator, so `pipe(video=…, generator=…)` and
    `scripts/edit.py` (whose encode is cached apart from the edit) draw alike: one seed, one edit."""
    if generator is None:
        return None
    return torch.Generator(generator.device).manual_seed(generator.initial_seed())


@dataclass
class ReAtCoPipelineOutput(BaseOutput):
    """frames, batched as diffusers' video pipelines return them (one video: a batch of one, so
    `frames[0]` is the clip): (1, F, H, W, 3) float32 in [0, 1] for "np" (the default), (1, F, 3,
    H, W) in [0, 1] for "pt", [[PIL images]] for "pil", the latents (1, C, F, h, w) for "latent".
    `diffusers.utils.export_to_video(out.frames[0], path)` and `reatco.write_video(out.frames[0],
    path)` take the clip as it comes.
    rad_losses: one record per RAD pass (step, timestep, total, per-word inner/outer terms).
    attention_maps: (J, F, h, w) per-word attention averaged over the RAD passes, when asked.
    attention_by_step: {step index: (J, F, h, w)} at the steps asked for in `attention_steps`.
    With `return_dict=False` the pipeline returns the tuple (frames, rad_losses, attention_maps)."""

    frames: Any
    rad_losses: list
    attention_maps: torch.Tensor | None = None
    attention_by_step: dict | None = None


class ReAtCoPipeline(DiffusionPipeline):
    """Load with `ReAtCoPipeline.from_pretrained(folder_or_hub_id)`; a folder saved by
    `save_pretrained` also loads with `diffusers.DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)` (its model_index.json names `reatco_pipeline.ReAtCoPipeline`, a
    one-line file that imports this class from the installed reatco)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    # what `callback_on_step_end` may read and replace (diffusers' SD names), e.g. for SDCFGCutoffCallback
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: TuneAVideoUNet,
        scheduler: DDIMScheduler,
    ):
        super().__init__()
        if not isinstance(unet, TuneAVideoUNet):
            unet = TuneAVideoUNet.from_unet2d(unet)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._model_defaults = None
        self._guidance_scale, self._num_timesteps, self._interrupt = None, None, False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, unet=None, scheduler=None, **kwargs):
        """Load a Stable-Diffusion-layout model (hub id or folder). `unet` may be a Tune-A-Video
        UNet (object or folder); by default the model's 2-D UNet is inflated. The scheduler is
        always DDIM, built from the model's scheduler config. `dtype=` (or the older spelling
        `torch_dtype=`) puts every component in that dtype. The model's `reatco_defaults.json`,
        where it has one, becomes `pipe.model_defaults`: the settings the call falls back to.

        A Tune-A-Video UNet folder (`scripts/tune.py`'s output) says `_class_name:
        UNet3DConditionModel` for the original code's sake, but diffusers' own class of that name
        is another architecture and refuses it: load it with `TuneAVideoUNet.from_pretrained`
        (or pass the folder as `unet=` here)."""
        dtype = _resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token") if k in kwargs}
        if unet is None:
            unet = TuneAVideoUNet.from_pretrained(pretrained_model_name_or_path, subfolder="unet", torch_dtype=dtype, **hub_kwargs)
        elif isinstance(unet, (str, os.PathLike)):
            unet = TuneAVideoUNet.from_pretrained(unet, torch_dtype=dtype, **hub_kwargs)
        elif not isinstance(unet, TuneAVideoUNet) and isinstance(unet, UNet2DConditionModel):
            unet = TuneAVideoUNet.from_unet2d(unet)
        if dtype is not None and unet.dtype != dtype:  # a UNet object given in another dtype
            unet = cast_dtype(unet, dtype)
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(pretrained_model_name_or_path, subfolder="scheduler", **hub_kwargs)
        if _is_own_shim(pretrained_model_name_or_path):  # our saved folder: its one-line import is ours
            kwargs.setdefault("trust_remote_code", True)
        if dtype is not None:
            kwargs[DTYPE_KWARG] = dtype
        pipe = super().from_pretrained(pretrained_model_name_or_path, unet=unet, scheduler=scheduler, **kwargs)
        pipe._model_defaults = read_model_defaults(pretrained_model_name_or_path, hub_kwargs)
        return pipe

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' save, plus what makes the folder reatco's: model_index.json names
        `["reatco_pipeline", "ReAtCoPipeline"]` with that one-line file beside it (so that
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` finds this class), and
        the model's defaults in `reatco_defaults.json`."""
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = os.fspath(save_directory)
        index_path = os.path.join(folder, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [_SHIM_MODULE, "ReAtCoPipeline"]
        write_json_atomic(index_path, index, sort_keys=True)
        write_text_atomic(os.path.join(folder, f"{_SHIM_MODULE}.py"), _SHIM)
        if self.model_defaults:
            write_json_atomic(os.path.join(folder, DEFAULTS_FILE), self.model_defaults)

    @property
    def model_defaults(self) -> dict:
        """The model folder's reatco settings (reatco_defaults.json); {} where it has none. The
        call's own arguments win over them; see reatco/model_defaults.py."""
        if self._model_defaults is None:  # loaded by DiffusionPipeline.from_pretrained: read the folder
            location = getattr(self.config, "_name_or_path", None)
            self._model_defaults = read_model_defaults(location, local_only=True) if location else {}
        return self._model_defaults

    @model_defaults.setter
    def model_defaults(self, value: dict) -> None:
        from .model_defaults import check_model_defaults

        self._model_defaults = check_model_defaults(value or {}, "model_defaults")

    # diffusers' pipeline state, for callbacks (PipelineCallback, SDCFGCutoffCallback, ...)
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale is not None and self._guidance_scale > 1.0

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` from a callback to skip the remaining steps (as in diffusers)."""
        return self._interrupt

    def enable_vae_slicing(self):
        """Decode (and encode) one frame at a time: VAE memory no longer grows with the clip."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self):
        self.vae.disable_slicing()

    # ------------------------------------------------------------------ the backbone

    @property
    def backbone(self) -> TuneAVideoBackbone:
        """The model as RAD, IRJS and the loop see it (reatco/backbones/base.py): a view over the
        current components, on the execution device."""
        progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        return TuneAVideoBackbone(self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler,
                                  self._execution_device, progress)

    # ------------------------------------------------------------------ encoders

    def encode_prompt(self, prompt: str | PromptTokens) -> torch.Tensor:
        """(1, L, d) text embeddings of a prompt (or of its tokens, `reatco.tokens.tokenize_prompt`)."""
        return self.backbone.encode_prompt(prompt)

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] → scaled latents (1, C, F, h, w), sampled with `generator`."""
        return self.backbone.encode_video(video, generator)

    def decode_latents(self, latents: torch.Tensor, reference: torch.Tensor | None = None, *,
                       reference_statistics: bool = True, keep_reference_outside: torch.Tensor | None = None) -> torch.Tensor:
        """(1, C, F, h, w) → frames (F, 3, H, W) in [0, 1].

        reference: latents of the same shape (the source's): every GroupNorm of the decoder then
        normalises frame i by the statistics it had for reference frame i (`reatco.irjs.decoding`), unless
        `reference_statistics` is False. keep_reference_outside: a (1, 1, F, h, w) latent mask
        (1 = edited cell): where it is 0 the pixels are the reference's own decode.
        With VAE slicing on, both are decoded one frame at a time, interleaved, so only one frame's
        activations are ever held."""
        return self.backbone.decode_latents(latents, reference, reference_statistics=reference_statistics,
                                            keep_reference_outside=keep_reference_outside)

    def invert(self, source_latents: torch.Tensor, prompt: str = "", num_inference_steps: int = 50, guidance_scale: float = 1.0):
        """DDIM inversion trajectory (steps + 1, 1, C, F, h, w) of `source_latents`."""
        return self.backbone.invert(source_latents, prompt, num_inference_steps, guidance_scale)

    # ------------------------------------------------------------------ regions

    def prepare_objects(self, prompt: str | PromptTokens, objects: Sequence, n_frames: int, height: int, width: int,
                        cell_px: int, find_source=None) -> list[EditObject]:
        """Objects → EditObjects (word, occurrence, region, token indices), each resolved once. An
        object is an ObjectConfig or a dict of its fields (typed here) with `word`, optional
        `occurrence`, and a region: `region` (a Region) or `box`/`boxes`/`mask`/`boxes_file`, or
        `source` (found in the source clip by `find_source`, see `source_finder`); EditObjects are
        taken as they are."""
        return resolve_objects(self.tokenizer, prompt, objects, n_frames, height, width, cell_px, find_source=find_source)

    def source_finder(self, video: torch.Tensor | None, source_latents: torch.Tensor | None, source_prompt: str, cell_px: int):
        """`find_source(specs, fields)` for objects given as `source:` — regions found in the source
        clip, as EditRunner finds them: the model's own cross-attention on the source latents under
        `source_prompt` (reatco/regions/finding.py), or a detector on the frames
        (reatco/regions/detector.py). None without the source frames and latents."""
        if video is None or source_latents is None:
            return None
        device = self._execution_device

        def find(specs, fields):
            regions = []
            for spec, field in zip(specs, fields):
                if spec.detector:
                    frames = to_uint8((video.cpu() + 1) / 2)
                    regions += detect_source_regions(frames, [spec], cell_px, str(device), [field])
                else:
                    regions += find_source_regions(self.backbone, video.to(device), source_latents, source_prompt, [spec],
                                                   cell_px, [field])
            return regions

        return find

    # ------------------------------------------------------------------ call steps

    def check_inputs(self, prompt, objects, generator, num_inference_steps, guidance_scale, negative_prompt,
                     start_in_regions, rad, irjs, window, attention_cell_px, output_type="np",
                     callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)) -> "CallSettings":
        """Every setting checked before any model work, with the model's defaults filled in for
        those left as None (a `rad`/`irjs`/`window` dict is merged over the model's section and
        validated like a YAML config)."""
        prompt = _single("prompt", prompt, (str, PromptTokens), "call the pipeline once per prompt")
        tokens = tokenize_prompt(self.tokenizer, prompt)  # the one tokenization of the prompt in this call
        generator = _single("generator", generator, torch.Generator, "pass one torch.Generator")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {unknown} are not tensors this pipeline offers; "
                             f"it offers {self._callback_tensor_inputs}")
        defaults = call_defaults(self.model_defaults)
        num_inference_steps = num_inference_steps if num_inference_steps is not None else defaults.get("num_inference_steps", 50)
        guidance_scale = guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 12.5)
        negative_prompt = negative_prompt if negative_prompt is not None else defaults.get("negative_prompt", "")
        start_in_regions = start_in_regions if start_in_regions is not None else defaults.get("start_in_regions", "inversion")
        attention_cell_px = attention_cell_px if attention_cell_px is not None else defaults.get("attention_cell_px")
        # The same schema, checks and wording as a YAML config (ConfigError naming e.g. rad.refinement;
        # the sampling settings by their argument names: guidance_scale, start_in_regions).
        section_settings("sampling", {"steps": num_inference_steps, "guidance_scale": guidance_scale, "negative_prompt": negative_prompt,
                                      "start_in_regions": start_in_regions}, field="")
        rad = section_settings("rad", merge_section(defaults.get("rad"), rad), steps=num_inference_steps)
        irjs = section_settings("irjs", merge_section(defaults.get("irjs"), irjs))
        window = section_settings("window", merge_section(defaults.get("window"), window))
        if attention_cell_px is not None:
            check_attention_cell_px(attention_cell_px, "attention_cell_px")
        # The boundary: dict objects become ObjectConfigs here, once; checked as load_config checks a
        # config's objects (EditObjects, resolved by the runner, already are)
        objects = [obj if isinstance(obj, EditObject) else object_settings(obj, f"objects[{j}]")
                   for j, obj in enumerate(objects or ())]
        for j, obj in enumerate(objects):
            if not isinstance(obj, EditObject):
                validate_object(obj, f"objects[{j}]")
        # a prompt cut by the text encoder breaks RAD's normalisation over the prompt's own tokens
        check_edit_prompt(tokens, len(objects), rad, "prompt")
        if output_type not in ("pt", "np", "pil", "latent"):
            raise ValueError(f"output_type must be pt, np, pil or latent, not {output_type!r}")
        if self._execution_device.type == "cpu" and self.unet.dtype in (torch.float16, torch.bfloat16):
            warnings.warn(f"the pipeline runs in {str(self.unet.dtype).replace('torch.', '')} on a CPU: CPU kernels for "
                          "half precision are slow (an edit ran 13x slower than in float32) and less exact; load it "
                          "with dtype=torch.float32 on a CPU", stacklevel=3)
        n_train = self.scheduler.config.num_train_timesteps
        if num_inference_steps > n_train:
            raise ConfigError("num_inference_steps", f"{num_inference_steps} is more than the scheduler's {n_train} "
                                                     f"training steps; use at most {n_train} (50 is usual)")
        cell_px = attention_cell_px or self.vae_scale_factor * 4  # SD: 8 × 4 = 32 px per RAD cell
        return CallSettings(tokens.text, tokens, generator, num_inference_steps, guidance_scale, negative_prompt, start_in_regions,
                            rad, irjs, window, cell_px, tuple(callback_on_step_end_tensor_inputs), objects)

    def prepare_source(self, video, source_latents, inversion_trajectory, latents, generator, inversion_prompt,
                       num_inference_steps, irjs: IRJSConfig, n_frames=None, height=None, width=None):
        """(source latents V_0, inversion trajectory, starting latents x_T) from what was given:
        the frames are encoded (sampled with `encode_generator(generator)`, which leaves
        `generator` where it was) and inverted where a trajectory is needed; without a source,
        x_T is noise of the given size."""
        device, dtype = self._execution_device, self.unet.dtype
        if video is not None:
            video = _video_tensor(video, height, width, n_frames)
            check_video_tensor(video, "video")
            n_frames, _, height, width = video.shape
        encoded = video is not None and source_latents is None
        if encoded:
            source_latents = self.encode_video(video, encode_generator(generator))
        if source_latents is not None:
            source_latents = source_latents.to(device, dtype)
            needs_trajectory = latents is None or (irjs.enabled and irjs.source == "inversion")
            if inversion_trajectory is None and needs_trajectory:
                inversion_trajectory = self.invert(source_latents, inversion_prompt, num_inference_steps)
            if encoded:
                # The memory layout of a trajectory's first entry (the runner's cached source), so
                # that the IRJS noise and the decoder's statistics round alike in both paths.
                source_latents = source_latents.contiguous()
        elif irjs.enabled:
            raise ValueError("IRJS needs the source video (video=… or source_latents=…); pass irjs={'enabled': False}")
        if latents is None:
            if inversion_trajectory is not None:
                latents = inversion_trajectory[-1]
            else:
                if None in (n_frames, height, width):
                    raise ValueError("without a source video, give n_frames, height and width (or latents)")
                shape = (1, self.unet.config.in_channels, n_frames, height // self.vae_scale_factor, width // self.vae_scale_factor)
                latents = torch.randn(shape, generator=generator, device=torch.device("cpu")).to(device)
        latents = latents.to(device, dtype)
        if inversion_trajectory is not None:
            inversion_trajectory = inversion_trajectory.to(device, dtype)
            if inversion_trajectory.shape[0] != num_inference_steps + 1:
                raise ValueError(
                    f"inversion_trajectory has {inversion_trajectory.shape[0] - 1} steps but num_inference_steps is {num_inference_steps}"
                )
        return source_latents, inversion_trajectory, latents

    def prepare_regions(self, prompt, objects, n_frames, height, width, cell_px, box_grid, find_source=None):
        """Objects → (words, regions, token indices, RAD masks (J, F, gh, gw), each object's latent
        cells (J, F, h, w) bool and their union's latent cells (1, 1, F, h, w), 1 = editable)."""
        edit_objects = self.prepare_objects(prompt, objects or [], n_frames, height, width, cell_px, find_source)
        words, regions = [o.word for o in edit_objects], [o.region for o in edit_objects]
        token_indices = [list(o.token_indices) for o in edit_objects]
        if height % cell_px or width % cell_px:
            raise ConfigError("attention_cell_px", f"{cell_px} px does not divide the frame ({height}×{width}): "
                              "the RAD attention grid must tile it")
        if not regions:
            return words, regions, token_indices, None, None, None
        device, dtype = self._execution_device, self.unet.dtype
        latent_hw = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        attn_masks = object_masks(regions, n_frames, height // cell_px, width // cell_px, box_grid=box_grid).to(device)
        coverage = object_masks(regions, n_frames, *latent_hw, box_grid=box_grid)
        cells = irjs_ops.latent_region_mask(coverage, *latent_hw).to(device, dtype)
        return words, regions, token_indices, attn_masks, coverage >= 0.5, cells

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | PromptTokens,
        video: torch.Tensor | Sequence | None = None,
        objects: Sequence = (),
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        source_latents: torch.Tensor | None = None,
        inversion_trajectory: torch.Tensor | None = None,
        inversion_prompt: str = "",
        source_prompt: str | None = None,
        start_in_regions: str | None = None,
        rad: RADConfig | dict | None = None,
        irjs: IRJSConfig | dict | None = None,
        window: WindowConfig | dict | None = None,
        attention_cell_px: int | None = None,
        height: int | None = None,
        width: int | None = None,
        n_frames: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        output_type: str = "np",
        return_attention: bool = False,
        attention_steps: Sequence[int] = (),
        return_dict: bool = True,
    ) -> ReAtCoPipelineOutput | tuple:
        """Edit `video` (F, 3, H, W in [-1, 1], or a list of PIL images / uint8 arrays) towards `prompt`
        (a str, or its `reatco.tokens.PromptTokens` where the caller has tokenized it already).

        objects: one entry per word of interest, as in the config: {"word": …, "box" | "boxes" |
        "mask": …, "occurrence": k}, or {"word": …, "region": reatco.regions.region.Region}. Without a video, pass
        `source_latents` (and optionally `inversion_trajectory`), or neither for plain text-to-video
        from `latents` / noise (then IRJS is unavailable). An object may also be found in the source
        video, {"word": …, "source": {"word": <word of source_prompt>} or {"detector": …, "query": …}}
        (needs `video`); source_prompt describes the source clip (default: inversion_prompt).

        start_in_regions: "inversion" starts from the inverted source everywhere (the paper);
        "noise" re-draws the regions' latent cells as fresh noise from `generator`, so that the
        source object's layout, kept by the inversion, does not fight a new shape in its place;
        "tracked_noise" does the same with one noise patch per object that moves with its region
        (`reatco.irjs.region_noise.tracked_noise`), so every frame of an object starts alike.

        Arguments left as None take the model's defaults (`pipe.model_defaults`, from the folder's
        reatco_defaults.json), then the library's (the paper's SD settings: 50 steps, guidance
        12.5, start from the inversion, a 32 px attention cell). A `rad`/`irjs`/`window` dict is
        merged over the model's settings; a RADConfig/IRJSConfig/WindowConfig replaces them.

        One video and one prompt per call: a list of one prompt or one generator is taken as
        that one; longer lists are refused before any work. `callback_on_step_end` may be a
        function `(pipe, step, timestep, tensors) -> dict` or one of diffusers' PipelineCallbacks
        (e.g. `SDCFGCutoffCallback`); it reads and may replace the tensors named in
        `callback_on_step_end_tensor_inputs` (see `_callback_tensor_inputs`).

        return_attention: also return each word's attention map, averaged over the steps that
        record it (the RAD steps), and at each step of `attention_steps` on its own.
        """
        # 1. Check the inputs, filling what is left out from the model's defaults
        c = self.check_inputs(prompt, objects, generator, num_inference_steps, guidance_scale, negative_prompt,
                              start_in_regions, rad, irjs, window, attention_cell_px, output_type,
                              callback_on_step_end, callback_on_step_end_tensor_inputs)
        generator, num_inference_steps, rad, irjs, cell_px = c.generator, c.num_inference_steps, c.rad, c.irjs, c.cell_px
        dtype, backbone = self.unet.dtype, self.backbone

        # 2. The source: frames → latents → inversion trajectory, and the starting latents
        source_latents, inversion_trajectory, latents = self.prepare_source(
            video, source_latents, inversion_trajectory, latents, generator, inversion_prompt, num_inference_steps,
            irjs, n_frames, height, width)
        n_frames, height, width = latents.shape[2], latents.shape[3] * self.vae_scale_factor, latents.shape[4] * self.vae_scale_factor

        # 3. The objects: words, token indices, RAD masks and the regions' latent cells
        find_source = self.source_finder(None if video is None else _video_tensor(video), source_latents,
                                         inversion_prompt if source_prompt is None else source_prompt, cell_px)
        words, regions, token_indices, attn_masks, object_cells, cells = self.prepare_regions(
            c.tokens, c.objects, n_frames, height, width, cell_px, rad.box_grid, find_source)

        # 4. IRJS, and the start inside the regions (the inversion, fresh noise, or noise that moves with each object)
        invariant = None
        if irjs.enabled and regions:
            invariant = InvariantRegion(backbone, irjs, cells, source_latents, inversion_trajectory, generator)
        elif irjs.enabled:
            # No region means nothing is marked editable: blending would return the source video.
            logger.warning("IRJS is enabled but no object has a region: IRJS is skipped for this edit")
        if c.start_in_regions != "inversion" and regions:
            noise = torch.randn(latents.shape, generator=generator, device=torch.device("cpu")).to(latents.device, dtype)
            if c.start_in_regions == "tracked_noise":  # one patch per object, moved with its region
                noise = torch.stack([tracked_noise(object_cells, n, generator) for n in noise])
            latents = irjs_ops.blend(noise, latents, cells)

        # 5. The prompt embeddings ([negative, prompt] under guidance, as diffusers; a callback may swap them)
        cond = backbone.encode_prompt(c.tokens).to(dtype)
        negative_prompt_embeds = backbone.encode_prompt(c.negative_prompt).to(dtype)
        self._guidance_scale, self._interrupt = c.guidance_scale, False
        prompt_embeds = torch.cat([negative_prompt_embeds, cond]) if self.do_classifier_free_guidance else cond

        # 6. The timesteps, the temporal windows and the RAD guidance (which keeps the attention pictures and presence)
        timesteps = backbone.set_timesteps(num_inference_steps)
        self._num_timesteps = len(timesteps)
        windows = temporal_windows(n_frames, c.window.size, c.window.stride)
        use_rad = rad.enabled and bool(regions) and rad.max_update_steps > 0
        # the steps after which every frame of an object takes its region from its best-attended frame
        anchor_steps = {int(r * num_inference_steps) for r in rad.anchor_step_ratios} if use_rad else set()
        guidance = None
        if (use_rad or return_attention) and regions:
            n_text_tokens = backbone.text_token_count(c.tokens, rad.normalize_eot)
            observations = AttentionObservations(n_frames, return_attention, attention_steps, anchor_steps)
            guidance = RADGuidance(backbone, backbone.attention_layers(cell_px), cond, words, token_indices, attn_masks, rad,
                                   n_text_tokens, len(timesteps), observations)
        loop = _Loop(backbone, guidance, invariant, use_rad, return_attention and not use_rad and bool(regions),
                     anchor_steps, len(windows), cell_px, token_indices)

        # 7. The denoising loop: per window RAD, IRJS, the model call under guidance, the step; then anchoring
        with guidance.attached(differentiate=use_rad) if guidance is not None else contextlib.nullcontext():
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    outputs = [self._window_step(loop, latents[:, :, frames], i, t, frames, prompt_embeds) for frames in windows]
                    latents = merge_windows(outputs, windows, n_frames) if len(windows) > 1 else outputs[0]
                    if invariant is not None:
                        latents = invariant.after_step(latents, i)
                    if i in anchor_steps:  # every frame of an object from its best-attended frame on
                        latents, _ = anchor_object_latents(latents, object_cells, guidance.observations.presence(i))
                    if callback_on_step_end is not None:
                        available = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
                        result = callback_on_step_end(self, i, t, {k: available[k] for k in c.callback_tensor_inputs}) or {}
                        latents = result.get("latents", latents)
                        prompt_embeds = result.get("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = result.get("negative_prompt_embeds", negative_prompt_embeds)
                    progress.update()

        # 8. Decode (with the source's decoder statistics, and its own pixels outside the regions, where IRJS asks)
        check_finite(latents, "in the final latents", "lower rad.step_size or guidance_scale, or use float32")
        frames_out = latents if output_type == "latent" else self._decode(latents, source_latents, invariant, irjs, output_type)
        self.maybe_free_model_hooks()
        rad_records = guidance.records if guidance is not None else []
        attention = guidance.observations.mean_maps() if return_attention and guidance is not None else None
        if not return_dict:
            return frames_out, rad_records, attention
        by_step = guidance.observations.maps_by_step() if guidance is not None else {}
        return ReAtCoPipelineOutput(frames=frames_out, rad_losses=rad_records, attention_maps=attention,
                                    attention_by_step=by_step if return_attention else None)

    def _window_step(self, loop: "_Loop", x: torch.Tensor, i: int, t, frames, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """One window `frames` (x: its latents) at step i: the RAD update, the IRJS blend, the model
        call under classifier-free guidance (observing the words' attention where asked), the step."""
        guidance, backbone = loop.guidance, loop.backbone
        do_cfg = self.do_classifier_free_guidance  # a callback may have turned guidance off
        rad_here = loop.use_rad and guidance.runs_at(i)
        word_maps = presence = None  # this window's word maps, from the RAD pass or observed
        if rad_here:
            first = not guidance.records
            x, record, word_maps, presence = guidance.update(x, i, t, frames=frames)
            if first:
                self._warn_if_unattended(record, loop.cell_px, guidance.labels, loop.token_indices, guidance.settings)
        if loop.invariant is not None:
            x = loop.invariant.before_step(x, i, t, frames, loop.n_windows)
        x_in = backbone.scale_model_input(torch.cat([x, x]) if do_cfg else x, t)
        pictures = loop.pictures and i < guidance.settings.max_update_steps
        observe = pictures or (i in loop.anchor_steps and not rad_here)
        embeds = prompt_embeds if prompt_embeds.shape[0] == x_in.shape[0] else prompt_embeds[-x_in.shape[0]:]
        if guidance is None:
            noise = backbone.predict(x_in, t, embeds)
        else:  # attention pictures without RAD, or an anchor step's presence: the conditional half, detached
            noise = guidance.observed_call(lambda: backbone.predict(x_in, t, embeds), i, frames, frames, observe,
                                           pictures, word_maps, presence)
        if do_cfg:
            noise_u, noise_c = noise.chunk(2)
            noise = noise_u + self._guidance_scale * (noise_c - noise_u)
        return backbone.step(noise, t, x)

    def _decode(self, latents, source_latents, invariant, irjs: IRJSConfig, output_type: str):
        """The final latents → frames as `output_type` asks (np, pt or pil, batched as diffusers' video pipelines)."""
        keep_source = irjs.decode_outside in ("source", "source_frames")  # one and the same here: a latent frame a pixel frame
        if invariant is not None and (irjs.decode_statistics == "source" or keep_source):
            frames = self.decode_latents(latents, reference=source_latents, reference_statistics=irjs.decode_statistics == "source",
                                         keep_reference_outside=invariant.mask if keep_source else None).cpu()
        else:
            frames = self.decode_latents(latents).cpu()
        check_finite(frames, "in the decoded frames", "the VAE overflowed: decode in float32")
        return postprocess_video(frames, output_type)

    def _warn_if_unattended(self, record: dict, cell_px: int, words, token_indices, rad: RADConfig) -> None:
        """At the first RAD pass, a word whose attention inside its region is ~0 (inner term ≈ 1)
        cannot be pulled in by any step size: say what usually causes it."""
        lost = [w for w in words if record["inner"][w] > _UNATTENDED]
        if not lost:
            return
        tokens = {w: idx for w, idx in zip(words, token_indices)}
        logger.warning(
            "RAD: %s %s almost no attention inside %s region at the first step (inner term %s); RAD cannot move "
            "attention that is not there. Likely causes: attention_cell_px=%d is not the grid this model attends on "
            "(SD v1.x: 32; the shapes model: 8; a model folder's reatco_defaults.json sets it, pipe.model_defaults "
            "shows what was read); rad.token_normalization=%r on a model that gives nearly all its attention to the "
            "end/padding tokens (then use rad={'token_normalization': 'share', 'normalize_eot': True}); or the "
            "word's tokens %s are not the ones the model ties to the object (see "
            "reatco.tokens.token_table(pipe.tokenizer, prompt))",
            ", ".join(repr(w) for w in lost), "has" if len(lost) == 1 else "have", "its" if len(lost) == 1 else "their",
            ", ".join(f"{record['inner'][w]:.3f}" for w in lost), cell_px, rad.token_normalization,
            {w: tokens[w] for w in lost},
        )


try:  # diffusers ≥ 0.36 spells it dtype= and warns on torch_dtype=
    from diffusers.utils.deprecation_utils import _resolve_dtype as _diffusers_resolve_dtype  # noqa: F401

    DTYPE_KWARG = "dtype"
except ImportError:
    DTYPE_KWARG = "torch_dtype"

# inner RAD term (1 − the word's mean top-K attention in its region) above which the word is lost
_UNATTENDED = 0.99

# A saved pipeline's model_index.json names this module: DiffusionPipeline.from_pretrained imports it.
_SHIM_MODULE = "reatco_pipeline"
_SHIM = (
    '"""ReAtCoPipeline for diffusers\' DiffusionPipeline.from_pretrained(folder, trust_remote_code=True):\n'
    'the class comes from the installed reatco package (pip install reatco)."""\n\n'
    "from reatco.pipeline import ReAtCoPipeline  # noqa: F401\n"
)


def _resolve_dtype(dtype, torch_dtype):
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass only dtype=")
    return dtype if dtype is not None else torch_dtype


def _is_own_shim(location) -> bool:
    path = os.path.join(os.fspath(location), f"{_SHIM_MODULE}.py")
    try:
        with open(path) as f:
            return f.read() == _SHIM
    except OSError:
        return False


def _single(name: str, value, kind, fix: str):
    """One prompt / one generator per call: a one-item list is that item, more is refused early."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], kind):
            return value[0]
        raise ValueError(f"{name}: ReAtCoPipeline edits one video per call, with one {name}; got a list of "
                         f"{len(value)}: {fix}")
    if value is not None and not isinstance(value, kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(f"{name} must be a {kinds}, got {type(value).__name__}")
    return value


def _video_tensor(video, height=None, width=None, n_frames=None) -> torch.Tensor:
    """`video=` as (F, 3, H, W) in [-1, 1]: a path, a tensor, an array or a list of frames
    (reatco.video.video_input)."""
    if isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"video must be (frames, 3, H, W) in [-1, 1], got {tuple(video.shape)}")
        _check_range(video)
        return video
    return video_input(video, height, width, n_frames)


def _check_range(video: torch.Tensor) -> None:
    """A video tensor is float in [-1, 1]; uint8 or [0, 1] frames would be edited as a darker,
    washed-out clip without a word."""
    if not video.is_floating_point():
        raise ValueError(f"video is a {video.dtype} tensor: pass floats in [-1, 1] (video.float() / 127.5 - 1)")
    low, high = float(video.min()), float(video.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("video holds NaN or inf values")
    if low < -1.001 or high > 1.001:
        raise ValueError(f"video values span [{low:.3g}, {high:.3g}]; pass floats in [-1, 1] (uint8 frames: x / 127.5 - 1)")
    if low >= 0:
        raise ValueError(f"video values span [{low:.3g}, {high:.3g}]: that looks like [0, 1] images; pass [-1, 1] "
                         "(video * 2 - 1)")


def postprocess_video(frames: torch.Tensor, output_type: str):
    """Decoded (F, 3, H, W) in [0, 1] → diffusers' video output for one video (a batch of one):
    "np" (1, F, H, W, 3) float32, "pt" (1, F, 3, H, W), "pil" [[PIL.Image per frame]]."""
    if output_type == "pt":
        return frames.unsqueeze(0)
    clip = frames.float().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return clip[None]
    return [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip]]
