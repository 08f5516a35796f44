"""ReAtCoPipeline: Tune-A-Video editing with Re-Attentional Diffusion (RAD) and Invariant Region
Joint Sampling (IRJS), as a regular `diffusers.DiffusionPipeline`."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, logging
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from . import irjs as irjs_ops
from . import rad as rad_ops
from .config import _STARTS as STARTS
from .config import IRJSConfig, RADConfig, WindowConfig, section_settings
from .decoding import decode_chunks_with_reference_statistics
from .attention_maps import AttentionStore, RADForwardComplete, record_cross_attention
from .errors import ConfigError, check_finite
from .inversion import ddim_inversion
from .model_defaults import DEFAULTS_FILE, call_defaults, merge_section, read_model_defaults
from .models import TuneAVideoUNet, rad_attention_layers
from .region_noise import tracked_noise
from .regions import object_masks, parse_region
from .tokens import resolve_objects_tokens
from .video import check_video_tensor
from .windows import merge_windows, temporal_windows

logger = logging.get_logger(__name__)


@dataclass
class ReAtCoPipelineOutput(BaseOutput):
    """frames: (F, 3, H, W) in [0, 1] for "pt", (F, H, W, 3) floats in [0, 1] for "np", a list of
    PIL images for "pil" (one video: no batch axis). `reatco.write_video(frames, path)` takes each
    as it comes, diffusers' `export_to_video(frames, path)` the "np" and "pil" ones.
    rad_losses: one record per RAD pass (step, timestep, total, per-word inner/outer terms).
    attention_maps: (J, F, h, w) per-word attention averaged over the RAD passes, when asked.
    attention_by_step: {step index: (J, F, h, w)} at the steps asked for in `attention_steps`.
    With `return_dict=False` the pipeline returns the tuple (frames, rad_losses, attention_maps)."""

    frames: Any
    rad_losses: list
    attention_maps: torch.Tensor | None = None
    attention_by_step: dict | None = None


@dataclass
class _RADPass:
    """The result of one RAD forward; `grad` runs its single backward."""

    x: torch.Tensor
    loss: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor
    word_maps: torch.Tensor

    def grad(self, objective: str = "full") -> torch.Tensor:
        with torch.enable_grad():  # the pipeline runs under no_grad: the targets need a graph
            if objective == "max_inner":  # official refinement: the worst word's inner term only
                target = self.inner.clamp(min=0).max()
            elif objective == "inner":  # the inner terms alone (official update after refinement)
                target = self.inner.clamp(min=0).sum()
            else:
                target = self.loss
        if not target.requires_grad:
            return torch.zeros_like(self.x)
        return torch.autograd.grad(target, self.x)[0].detach()


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
            unet = unet.to(dtype=dtype)
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(pretrained_model_name_or_path, subfolder="scheduler", **hub_kwargs)
        if _is_own_shim(pretrained_model_name_or_path):  # our saved folder: its one-line import is ours
            kwargs.setdefault("trust_remote_code", True)
        if dtype is not None:
            kwargs[_DTYPE_KWARG] = dtype
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
        _write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
        _write_text(os.path.join(folder, f"{_SHIM_MODULE}.py"), _SHIM)
        if self.model_defaults:
            _write_text(os.path.join(folder, DEFAULTS_FILE), json.dumps(self.model_defaults, indent=2) + "\n")

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

    # ------------------------------------------------------------------ encoders

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self._execution_device))[0]

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] → scaled latents (1, C, F, h, w), sampled with `generator`."""
        pixels = video.to(self._execution_device, self.vae.dtype)
        dist = self.vae.encode(pixels).latent_dist
        latents = dist.sample(generator=generator) * self.vae.config.scaling_factor
        return latents.permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """(1, C, F, h, w) → frames (F, 3, H, W) in [0, 1].

        reference: latents of the same shape (the source's): every GroupNorm of the decoder then
        normalises frame i by the statistics it had for reference frame i (`reatco.decoding`).
        With VAE slicing on, both are decoded one frame at a time, interleaved, so only one frame's
        activations are ever held."""
        def to_vae(z):
            return (z[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor).to(self.vae.dtype)

        def decode(z):
            return self.vae.decode(z).sample

        frames = to_vae(latents)
        if reference is None:
            images = decode(frames)
        else:
            if reference.shape != latents.shape:
                raise ValueError(f"reference {tuple(reference.shape)} and latents {tuple(latents.shape)} must have one shape")
            per_chunk = 1 if self.vae.use_slicing else frames.shape[0]
            chunks = decode_chunks_with_reference_statistics(decode, self.vae.decoder, to_vae(reference.to(latents)).split(per_chunk),
                                                             frames.split(per_chunk))
            images = torch.cat(chunks)
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def invert(self, source_latents: torch.Tensor, prompt: str = "", num_inference_steps: int = 50, guidance_scale: float = 1.0):
        """DDIM inversion trajectory (steps + 1, 1, C, F, h, w) of `source_latents`."""
        cond = self.encode_prompt(prompt)
        uncond = self.encode_prompt("") if guidance_scale > 1.0 else None
        return ddim_inversion(
            self.unet, self.scheduler, source_latents, cond, num_inference_steps, guidance_scale, uncond,
            progress=not getattr(self, "_progress_bar_config", {}).get("disable", False),
        )

    # ------------------------------------------------------------------ regions

    def prepare_objects(self, prompt: str, objects: Sequence, n_frames: int, height: int, width: int, cell_px: int):
        """Objects → (words, regions, token indices). An object is a dict or config object with
        `word`, optional `occurrence`, and a region: `region` (a Region) or `box`/`boxes`/`mask`."""
        objects = [_as_object(o) for o in objects]
        regions = [
            o.region if getattr(o, "region", None) is not None else parse_region(o, n_frames, height, width, cell_px, field=f"objects[{j}]")
            for j, o in enumerate(objects)
        ]
        indices = resolve_objects_tokens(self.tokenizer, prompt, objects, "objects") if objects else []
        return [o.word for o in objects], regions, indices

    # ------------------------------------------------------------------ RAD

    def _rad_forward(self, latents, t, cond, token_indices, masks, store, rad: RADConfig, n_text_tokens) -> "_RADPass":
        """Conditional forward up to the last recorded layer, and the RAD terms with their graph."""
        x = latents.detach().requires_grad_(True)
        store.reset()
        store.mode = "record"
        with torch.enable_grad():
            try:
                self.unet(x, t, encoder_hidden_states=cond)
            except RADForwardComplete:
                pass  # everything RAD reads has been computed
            # Checkpointed blocks recompute the explicit attention during backward, unrecorded.
            store.mode = "replay"
            maps = store.maps()  # RAD's math in float32 at least (fp16 maps), float64 kept
            word_maps = self._word_maps(maps.to(torch.promote_types(maps.dtype, torch.float32)), token_indices, rad, n_text_tokens)
            store.reset()
            inner, outer = rad_ops.region_losses(word_maps, masks, top_k_ratio=rad.top_k_ratio, top_k_rounding=rad.top_k_rounding)
            loss = rad_ops.rad_loss(inner, outer)
        return _RADPass(x, loss, inner, outer, word_maps)

    @staticmethod
    def _word_maps(maps, token_indices, rad: RADConfig, n_text_tokens) -> torch.Tensor:
        """Recorded maps (F, h, w, L) → per-word attention (J, F, h, w), as RAD reads it."""
        text = rad_ops.text_attention(maps, n_text_tokens, temperature=rad.temperature, normalization=rad.token_normalization)
        word_maps = torch.stack([rad_ops.word_attention(text, idx, reduction=rad.word_tokens) for idx in token_indices])
        if rad.smoothing:
            word_maps = torch.stack(
                [rad_ops.gaussian_smooth_3d(m, kernel=rad.smoothing_kernel, sigma=rad.smoothing_sigma) for m in word_maps]
            )
        return word_maps

    def _rad_update(self, latents, step_index, t, cond, token_indices, masks, store, rad, step_size, n_text_tokens, words,
                    update: bool = True):
        """RAD at one denoising step: iterative refinement where scheduled, then (when `update`)
        x_t ← x_t − α_t ∇L. `rad.refinement` picks the control flow (RADConfig)."""
        step = self._rad_forward(latents, t, cond, token_indices, masks, store, rad, n_text_tokens)
        threshold = rad.refinement_thresholds.get(step_index)
        refine = threshold is not None and rad.max_refinement_iters > 0 and rad_ops.needs_refinement(step.inner, threshold)
        iters = 0
        objective, stale_outer = "full", None
        if refine and rad.refinement == "official":
            # Each iteration steps on the worst word's inner term of the pass at the current
            # latent, then tests the loss of that pass — measured before the step it just took.
            stale_outer = step.outer.detach()  # the official update below adds these, gradient-free
            while True:
                iters += 1
                converged = not rad_ops.needs_refinement(step.inner, threshold)
                latents = _descend(latents, step_size, step.grad("max_inner"))
                if converged or iters >= rad.max_refinement_iters:
                    break
                step = self._rad_forward(latents, t, cond, token_indices, masks, store, rad, n_text_tokens)
            step = self._rad_forward(latents, t, cond, token_indices, masks, store, rad, n_text_tokens)
            objective = "inner"
        elif refine:
            # Each forward feeds exactly one update, and the stop test reads the latest forward.
            while iters < rad.max_refinement_iters and rad_ops.needs_refinement(step.inner, threshold):
                latents = _descend(latents, step_size, step.grad(rad.refinement))
                step = self._rad_forward(latents, t, cond, token_indices, masks, store, rad, n_text_tokens)
                iters += 1
        outer = step.outer if stale_outer is None else stale_outer
        if update and rad_ops.rad_loss(step.inner.detach(), outer).item() != 0.0:
            latents = _descend(latents, step_size, step.grad(objective))
        store.mode = "off"
        check_finite(latents, f"after the RAD update at step {step_index}", "lower rad.step_size or use model.dtype=float32")
        record = {
            "step": step_index,
            "timestep": int(t),
            "refinement_iters": iters,
            "loss": rad_ops.rad_loss(step.inner.detach(), step.outer.detach()).item(),
            "inner": dict(zip(words, step.inner.tolist())),
            "outer": dict(zip(words, step.outer.tolist())),
        }
        return latents.detach(), record, step.word_maps.detach()

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
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
        output_type: str = "pt",
        return_attention: bool = False,
        attention_steps: Sequence[int] = (),
        return_dict: bool = True,
    ) -> ReAtCoPipelineOutput | tuple:
        """Edit `video` (F, 3, H, W in [-1, 1], or a list of PIL images / uint8 arrays) towards `prompt`.

        objects: one entry per word of interest, as in the config: {"word": …, "box" | "boxes" |
        "mask": …, "occurrence": k}, or {"word": …, "region": reatco.regions.Region}. Without a video, pass
        `source_latents` (and optionally `inversion_trajectory`), or neither for plain text-to-video
        from `latents` / noise (then IRJS is unavailable).

        start_in_regions: "inversion" starts from the inverted source everywhere (the paper);
        "noise" re-draws the regions' latent cells as fresh noise from `generator`, so that the
        source object's layout, kept by the inversion, does not fight a new shape in its place;
        "tracked_noise" does the same with one noise patch per object that moves with its region
        (`reatco.region_noise.tracked_noise`), so every frame of an object starts alike.

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
        prompt = _single("prompt", prompt, str, "call the pipeline once per prompt")
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
        # The same schema and checks as a YAML config (ConfigError naming e.g. rad.refinement).
        rad = section_settings("rad", merge_section(defaults.get("rad"), rad), steps=num_inference_steps)
        irjs = section_settings("irjs", merge_section(defaults.get("irjs"), irjs))
        window = section_settings("window", merge_section(defaults.get("window"), window))
        _check_call(self.tokenizer, prompt, objects, guidance_scale, attention_cell_px, rad)
        if output_type not in ("pt", "np", "pil", "latent"):
            raise ValueError(f"output_type must be pt, np, pil or latent, not {output_type!r}")
        if start_in_regions not in STARTS:  # the config schema's choices
            raise ValueError(f"start_in_regions must be one of {', '.join(STARTS)}, not {start_in_regions!r}")
        device = self._execution_device
        dtype = self.unet.dtype
        cell_px = attention_cell_px or self.vae_scale_factor * 4  # SD: 8 × 4 = 32 px per RAD cell

        # Source: frames → latents → inversion trajectory.
        if video is not None:
            video = _video_tensor(video)
            check_video_tensor(video, "video")
            n_frames, _, height, width = video.shape
            if source_latents is None:
                source_latents = self.encode_video(video, generator)
        if source_latents is not None:
            source_latents = source_latents.to(device, dtype)
            n_frames = source_latents.shape[2]
            height = source_latents.shape[3] * self.vae_scale_factor
            width = source_latents.shape[4] * self.vae_scale_factor
            needs_trajectory = latents is None or (irjs.enabled and irjs.source == "inversion")
            if inversion_trajectory is None and needs_trajectory:
                inversion_trajectory = self.invert(source_latents, inversion_prompt, num_inference_steps)
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
        n_frames, height, width = latents.shape[2], latents.shape[3] * self.vae_scale_factor, latents.shape[4] * self.vae_scale_factor
        if inversion_trajectory is not None:
            inversion_trajectory = inversion_trajectory.to(device, dtype)
            if inversion_trajectory.shape[0] != num_inference_steps + 1:
                raise ValueError(
                    f"inversion_trajectory has {inversion_trajectory.shape[0] - 1} steps but num_inference_steps is {num_inference_steps}"
                )

        # Words and regions.
        words, regions, token_indices = self.prepare_objects(prompt, objects or [], n_frames, height, width, cell_px)
        if height % cell_px or width % cell_px:
            raise ConfigError("attention_cell_px", f"{cell_px} px does not divide the frame ({height}×{width}): "
                              "the RAD attention grid must tile it")
        grid = (height // cell_px, width // cell_px)
        latent_hw = (latents.shape[3], latents.shape[4])
        attn_masks = object_masks(regions, n_frames, *grid, box_grid=rad.box_grid).to(device) if regions else None
        # The regions' latent cells (1 = editable): IRJS blends with them, a noise start re-draws them.
        latent_coverage = object_masks(regions, n_frames, *latent_hw, box_grid=rad.box_grid) if regions else None
        cells = irjs_ops.latent_region_mask(latent_coverage, *latent_hw).to(device, dtype) if regions else None
        region_mask = None
        if irjs.enabled and regions:
            region_mask = irjs_ops.feather_mask(cells, irjs.feather) if irjs.feather else cells
        elif irjs.enabled:
            # No region means nothing is marked editable: blending would return the source video.
            logger.warning("IRJS is enabled but no object has a region: IRJS is skipped for this edit")
        if start_in_regions != "inversion" and regions:
            noise = torch.randn(latents.shape, generator=generator, device=torch.device("cpu")).to(device, dtype)
            if start_in_regions == "tracked_noise":  # one patch per object, moved with its region
                noise = torch.stack([tracked_noise(latent_coverage >= 0.5, n, generator) for n in noise])
            latents = irjs_ops.blend(noise, latents, cells)

        use_rad = rad.enabled and bool(regions) and rad.max_update_steps > 0
        n_prompt_tokens = len(self.tokenizer(prompt).input_ids)
        n_text_tokens = n_prompt_tokens - 2 if rad.normalize_eot else self.tokenizer.model_max_length - 2

        cond = self.encode_prompt(prompt).to(dtype)
        negative_prompt_embeds = self.encode_prompt(negative_prompt).to(dtype)
        self._guidance_scale, self._interrupt = guidance_scale, False
        # diffusers' layout: [negative, prompt] under guidance; a callback may swap it (CFG cut-off)
        prompt_embeds = torch.cat([negative_prompt_embeds, cond]) if self.do_classifier_free_guidance else cond

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        step_sizes = rad_ops.step_sizes(len(timesteps), rad.step_size, tuple(rad.step_size_range))
        windows = temporal_windows(n_frames, window.size, window.stride)
        store = AttentionStore(grid=grid, stop_early=rad.early_stop)
        rad_layers = rad_attention_layers(self.unet, self.vae_scale_factor, cell_px) if (use_rad or return_attention) and regions else []
        rad_records: list[dict] = []
        attention_sum, attention_count = None, 0
        by_step: dict[int, tuple] = {}  # step index → (sum, count) over its windows

        with contextlib.ExitStack() as stack:
            if rad_layers:
                stack.enter_context(record_cross_attention(self.unet, rad_layers, store))
            if use_rad:
                stack.enter_context(_frozen_parameters(self.unet))
                if rad.gradient_checkpointing:
                    stack.enter_context(_gradient_checkpointing(self.unet))
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    do_cfg = self.do_classifier_free_guidance  # a callback may have turned guidance off
                    source_t = None
                    before_step = region_mask is not None and irjs.placement == "before_step"
                    # official: each window draws its own source noise (one draw serves a single pass)
                    per_window = before_step and irjs.noise == "per_window" and len(windows) > 1
                    if before_step and not per_window:
                        source_t = self._irjs_source(irjs, source_latents, inversion_trajectory, i, t, generator)
                    rad_here = use_rad and (i < rad.max_update_steps or i in rad.refinement_thresholds)
                    outputs, window_sources = [], []
                    for frames in windows:
                        x = latents[:, :, frames]
                        if rad_here:
                            alpha = float(step_sizes[i]) * rad_ops.frame_scale(len(frames), rad.calibration_frames)
                            x, record, word_maps = self._rad_update(
                                x, i, t, cond, token_indices, attn_masks[:, frames], store, rad, alpha, n_text_tokens, words,
                                update=i < rad.max_update_steps,
                            )
                            record["frames"] = [frames[0], frames[-1]]
                            if not rad_records:
                                self._warn_if_unattended(record, cell_px, words, token_indices, rad)
                            rad_records.append(record)
                            if return_attention:
                                attention_sum, attention_count = _accumulate(attention_sum, attention_count, word_maps, frames, n_frames)
                                if i in attention_steps:
                                    by_step[i] = _accumulate(*by_step.get(i, (None, 0)), word_maps, frames, n_frames)
                        if per_window:
                            window_sources.append(self._irjs_source(irjs, source_latents, inversion_trajectory, i, t, generator, frames))
                            x = irjs_ops.blend(x, window_sources[-1], region_mask[:, :, frames])
                        elif source_t is not None:
                            x = irjs_ops.blend(x, source_t[:, :, frames], region_mask[:, :, frames])
                        x_in = torch.cat([x, x]) if do_cfg else x
                        x_in = self.scheduler.scale_model_input(x_in, t)
                        observe = return_attention and not use_rad and bool(regions) and i < rad.max_update_steps
                        if observe:  # attention pictures without RAD: the conditional half, detached
                            store.mode, store.observe_rows = "observe", len(frames)
                        embeds = prompt_embeds if prompt_embeds.shape[0] == x_in.shape[0] else prompt_embeds[-x_in.shape[0]:]
                        noise = self.unet(x_in, t, encoder_hidden_states=embeds).sample
                        if observe:
                            word_maps = self._word_maps(store.maps().float(), token_indices, rad, n_text_tokens)
                            store.mode = "off"
                            store.reset()
                            attention_sum, attention_count = _accumulate(attention_sum, attention_count, word_maps, frames, n_frames)
                            if i in attention_steps:
                                by_step[i] = _accumulate(*by_step.get(i, (None, 0)), word_maps, frames, n_frames)
                        if do_cfg:
                            noise_u, noise_c = noise.chunk(2)
                            noise = noise_u + self._guidance_scale * (noise_c - noise_u)
                        outputs.append(self.scheduler.step(noise, t, x).prev_sample)
                    latents = merge_windows(outputs, windows, n_frames) if len(windows) > 1 else outputs[0]
                    if per_window:  # for the callback: each frame's sources averaged like the latents
                        source_t = merge_windows(window_sources, windows, n_frames)
                    if region_mask is not None and irjs.placement == "after_step":
                        prev = self._irjs_source(irjs, source_latents, inversion_trajectory, i + 1, None, generator)
                        latents = irjs_ops.blend(latents, prev, region_mask)
                    if callback_on_step_end is not None:
                        available = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
                        values = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                        result = callback_on_step_end(self, i, t, values) or {}
                        latents = result.get("latents", latents)
                        prompt_embeds = result.get("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = result.get("negative_prompt_embeds", negative_prompt_embeds)
                    progress.update()

        check_finite(latents, "in the final latents", "lower rad.step_size or guidance_scale, or use float32")
        attention = None
        if return_attention and attention_sum is not None:
            attention = (attention_sum / attention_count.clamp(min=1)).cpu()
        attention_by_step = {i: (total / count.clamp(min=1)).cpu() for i, (total, count) in sorted(by_step.items())}
        if output_type == "latent":
            frames_out = latents
        else:
            if region_mask is not None and irjs.decode_statistics == "source":
                frames_out = self.decode_latents(latents, reference=source_latents).cpu()
            else:
                frames_out = self.decode_latents(latents).cpu()
            check_finite(frames_out, "in the decoded frames", "the VAE overflowed: decode in float32")
            if output_type in ("np", "pil"):
                frames_out = frames_out.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                frames_out = [Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames_out]
        self.maybe_free_model_hooks()
        if not return_dict:
            return frames_out, rad_records, attention
        return ReAtCoPipelineOutput(frames=frames_out, rad_losses=rad_records, attention_maps=attention,
                                    attention_by_step=attention_by_step if return_attention else None)

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

    def _irjs_source(self, irjs: IRJSConfig, source_latents, trajectory, step_index, t, generator, frames=None):
        """V at the noise level of sampling step `step_index` (step_index == steps → the clean V_0),
        for every frame or only `frames` (then the noise is drawn for those frames alone)."""
        n_steps = len(self.scheduler.timesteps)
        if frames is not None:
            source_latents = source_latents[:, :, frames]
            trajectory = None if trajectory is None else trajectory[:, :, :, frames]
        if step_index >= n_steps:
            return source_latents
        if irjs.source == "inversion":
            return trajectory[n_steps - step_index]
        timestep = self.scheduler.timesteps[step_index] if t is None else t
        noise = torch.randn(source_latents.shape, generator=generator, device=torch.device("cpu")).to(source_latents)
        return irjs_ops.noise_source(self.scheduler, source_latents, timestep, noise)


try:  # diffusers ≥ 0.36 spells it dtype= and warns on torch_dtype=
    from diffusers.utils.deprecation_utils import _resolve_dtype as _diffusers_resolve_dtype  # noqa: F401

    _DTYPE_KWARG = "dtype"
except ImportError:
    _DTYPE_KWARG = "torch_dtype"

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


def _write_text(path: str, text: str) -> None:
    """Write through a temp file and rename: never a half-written file (mode from the umask)."""
    from .files import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def _single(name: str, value, kind, fix: str):
    """One prompt / one generator per call: a one-item list is that item, more is refused early."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], kind):
            return value[0]
        raise ValueError(f"{name}: ReAtCoPipeline edits one video per call, with one {name}; got a list of "
                         f"{len(value)}: {fix}")
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _descend(latents: torch.Tensor, step_size: float, grad: torch.Tensor) -> torch.Tensor:
    """x ← x − α ∇L in float32 at least (α·∇L rounds badly in fp16; float64 stays), back in the
    latents' dtype."""
    work = torch.promote_types(latents.dtype, torch.float32)
    return (latents.to(work) - step_size * grad.to(work)).to(latents.dtype)


def _as_object(obj):
    """Config dataclass, dict or namespace → something with .word/.occurrence/.box/.boxes/.mask."""
    if isinstance(obj, dict):
        from types import SimpleNamespace

        return SimpleNamespace(**{"occurrence": None, "box": None, "boxes": None, "mask": None, "boxes_file": None, "track": None, "source": None, "region": None, **obj})
    return obj


def _video_tensor(video) -> torch.Tensor:
    if isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"video must be (frames, 3, H, W) in [-1, 1], got {tuple(video.shape)}")
        _check_range(video)
        return video
    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in video]
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1


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


def _check_call(tokenizer, prompt, objects, guidance_scale, attention_cell_px, rad: RADConfig) -> None:
    """Settings from Python, checked before any model work (configs are checked by reatco.config)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) \
            or guidance_scale < 1:
        raise ConfigError("guidance_scale", f"must be a finite number ≥ 1 (1 = no guidance), got {guidance_scale!r}")
    if attention_cell_px is not None and (isinstance(attention_cell_px, bool) or not isinstance(attention_cell_px, int)
                                          or attention_cell_px < 1):
        raise ConfigError("attention_cell_px", f"must be a positive number of pixels (or None), got {attention_cell_px!r}")
    for name in ("step_size", "temperature", "smoothing_sigma", "top_k_ratio"):
        value = getattr(rad, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"rad.{name}", f"must be a finite number, got {value!r}")
    if not isinstance(rad.max_update_steps, int) or rad.max_update_steps < 0:
        raise ConfigError("rad.max_update_steps", f"must be an integer ≥ 0, got {rad.max_update_steps!r}")
    if not rad.temperature > 0:
        raise ConfigError("rad.temperature", f"must be > 0 (default 100), got {rad.temperature!r}")
    if objects and rad.enabled and rad.normalize_eot:
        n, limit = len(tokenizer(prompt).input_ids), tokenizer.model_max_length
        if n > limit:
            raise ConfigError("prompt", f"has {n} tokens but the text encoder reads at most {limit} (start and end "
                              "tokens included); shorten it")


def _accumulate(total, count, word_maps, frames, n_frames):
    if total is None:
        total = torch.zeros(word_maps.shape[0], n_frames, *word_maps.shape[2:], device=word_maps.device)
        count = torch.zeros(1, n_frames, 1, 1, device=word_maps.device)
    total[:, frames] += word_maps
    count[:, frames] += 1
    return total, count


@contextlib.contextmanager
def _frozen_parameters(module: torch.nn.Module):
    """RAD needs ∂L/∂x only: with frozen weights autograd keeps no activations for weight grads."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _gradient_checkpointing(unet):
    was = unet.is_gradient_checkpointing
    if not was:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if not was:
            unet.disable_gradient_checkpointing()
