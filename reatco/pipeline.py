"""ReAtCoPipeline: Tune-A-Video editing with Re-Attentional Diffusion (RAD) and Invariant Region
Joint Sampling (IRJS), as a regular `diffusers.DiffusionPipeline`."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput, logging
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from . import irjs as irjs_ops
from . import rad as rad_ops
from .config import _DECODE_STATISTICS as DECODE_STATISTICS
from .config import _PLACEMENTS as PLACEMENTS
from .config import _SOURCES as IRJS_SOURCES
from .config import _STARTS as STARTS
from .config import IRJSConfig, RADConfig, WindowConfig
from .decoding import decode_with_reference_statistics
from .attention_maps import AttentionStore, RADForwardComplete, record_cross_attention
from .errors import ConfigError
from .inversion import ddim_inversion
from .models import TuneAVideoUNet, rad_attention_layers
from .region_noise import tracked_noise
from .regions import object_masks, parse_region
from .tokens import resolve_objects_tokens
from .windows import merge_windows, temporal_windows

logger = logging.get_logger(__name__)


def _settings(cls, value):
    """Accept the config section's dataclass, a (partial) dict of its fields, or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    names = {f for f in cls.__dataclass_fields__}
    unknown = set(value) - names
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown settings {sorted(unknown)}; known: {sorted(names)}")
    return cls(**value)


@dataclass
class ReAtCoPipelineOutput(BaseOutput):
    """frames: (F, 3, H, W) in [0, 1] for "pt", (F, H, W, 3) for "np", a list of PIL images for "pil".
    rad_losses: one record per RAD pass (step, timestep, total, per-word inner/outer terms).
    attention_maps: (J, F, h, w) per-word attention averaged over the RAD passes, when asked."""

    frames: Any
    rad_losses: list
    attention_maps: torch.Tensor | None = None


@dataclass
class _RADPass:
    """The result of one RAD forward; `grad` runs its single backward."""

    x: torch.Tensor
    loss: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor
    word_maps: torch.Tensor

    def grad(self, objective: str = "full") -> torch.Tensor:
        if objective == "max_inner":  # official refinement: the worst word's inner term only
            target = self.inner.clamp(min=0).max()
        else:
            target = self.loss
        if not target.requires_grad:
            return torch.zeros_like(self.x)
        return torch.autograd.grad(target, self.x)[0].detach()


class ReAtCoPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"

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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, unet=None, scheduler=None, **kwargs):
        """Load a Stable-Diffusion-layout model (hub id or folder). `unet` may be a Tune-A-Video
        UNet (object or folder); by default the model's 2-D UNet is inflated. The scheduler is
        always DDIM, built from the model's scheduler config."""
        torch_dtype = kwargs.get("torch_dtype")
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token") if k in kwargs}
        if unet is None:
            unet = TuneAVideoUNet.from_pretrained(pretrained_model_name_or_path, subfolder="unet", torch_dtype=torch_dtype, **hub_kwargs)
        elif isinstance(unet, (str, os.PathLike)):
            unet = TuneAVideoUNet.from_pretrained(unet, torch_dtype=torch_dtype, **hub_kwargs)
        elif not isinstance(unet, TuneAVideoUNet) and isinstance(unet, UNet2DConditionModel):
            unet = TuneAVideoUNet.from_unet2d(unet)
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(pretrained_model_name_or_path, subfolder="scheduler", **hub_kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, unet=unet, scheduler=scheduler, **kwargs)

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
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, C, F, h, w) → frames (F, 3, H, W) in [0, 1]."""
        frames = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        images = self.vae.decode(frames.to(self.vae.dtype)).sample
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
            word_maps = self._word_maps(store.maps().float(), token_indices, rad, n_text_tokens)
            store.reset()
            inner, outer = rad_ops.region_losses(word_maps, masks, top_k_ratio=rad.top_k_ratio)
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

    def _rad_update(self, latents, step_index, t, cond, token_indices, masks, store, rad, step_size, n_text_tokens, words):
        """RAD at one denoising step: iterative refinement where scheduled, then x_t ← x_t − α_t ∇L.

        Each forward is followed by exactly one backward, for the update it feeds; the stop test
        of the refinement reads the same forward, so no forward is discarded."""
        step = self._rad_forward(latents, t, cond, token_indices, masks, store, rad, n_text_tokens)
        threshold = rad.refinement_thresholds.get(step_index)
        iters = 0
        while threshold is not None and iters < rad.max_refinement_iters and rad_ops.needs_refinement(step.inner.detach(), threshold):
            latents = latents - step_size * step.grad(rad.refinement_loss)
            step = self._rad_forward(latents, t, cond, token_indices, masks, store, rad, n_text_tokens)
            iters += 1
        if step.loss.item() != 0.0:
            latents = latents - step_size * step.grad("full")
        store.mode = "off"
        record = {
            "step": step_index,
            "timestep": int(t),
            "refinement_iters": iters,
            "loss": step.loss.item(),
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
        num_inference_steps: int = 50,
        guidance_scale: float = 12.5,
        negative_prompt: str = "",
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        source_latents: torch.Tensor | None = None,
        inversion_trajectory: torch.Tensor | None = None,
        inversion_prompt: str = "",
        start_in_regions: str = "inversion",
        rad: RADConfig | dict | None = None,
        irjs: IRJSConfig | dict | None = None,
        window: WindowConfig | dict | None = None,
        attention_cell_px: int | None = None,
        height: int | None = None,
        width: int | None = None,
        n_frames: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        output_type: str = "pt",
        return_attention: bool = False,
    ) -> ReAtCoPipelineOutput:
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
        """
        rad = _settings(RADConfig, rad)
        irjs = _settings(IRJSConfig, irjs)
        window = _settings(WindowConfig, window)
        if output_type not in ("pt", "np", "pil", "latent"):
            raise ValueError(f"output_type must be pt, np, pil or latent, not {output_type!r}")
        # the config schema's choices, for callers that pass values without a config
        for name, value, choices in (("irjs.placement", irjs.placement, PLACEMENTS), ("irjs.source", irjs.source, IRJS_SOURCES),
                                     ("irjs.decode_statistics", irjs.decode_statistics, DECODE_STATISTICS),
                                     ("start_in_regions", start_in_regions, STARTS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        device = self._execution_device
        dtype = self.unet.dtype
        cell_px = attention_cell_px or self.vae_scale_factor * 4  # SD: 8 × 4 = 32 px per RAD cell

        # Source: frames → latents → inversion trajectory.
        if video is not None:
            video = _video_tensor(video)
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
            raise ConfigError("video.height", f"{height}×{width} is not a multiple of the attention cell ({cell_px} px)")
        grid = (height // cell_px, width // cell_px)
        latent_hw = (latents.shape[3], latents.shape[4])
        attn_masks = object_masks(regions, n_frames, *grid).to(device) if regions else None
        # The regions' latent cells (1 = editable): IRJS blends with them, a noise start re-draws them.
        latent_coverage = object_masks(regions, n_frames, *latent_hw) if regions else None
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
        uncond = self.encode_prompt(negative_prompt).to(dtype)
        do_cfg = guidance_scale > 1.0
        text_embeddings = torch.cat([uncond, cond]) if do_cfg else cond

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        step_sizes = rad_ops.step_sizes(len(timesteps), rad.step_size, tuple(rad.step_size_range))
        windows = temporal_windows(n_frames, window.size, window.stride)
        store = AttentionStore(grid=grid, stop_early=rad.early_stop)
        rad_layers = rad_attention_layers(self.unet, self.vae_scale_factor, cell_px) if (use_rad or return_attention) and regions else []
        rad_records: list[dict] = []
        attention_sum, attention_count = None, 0

        with contextlib.ExitStack() as stack:
            if rad_layers:
                stack.enter_context(record_cross_attention(self.unet, rad_layers, store))
            if use_rad:
                stack.enter_context(_frozen_parameters(self.unet))
                if rad.gradient_checkpointing:
                    stack.enter_context(_gradient_checkpointing(self.unet))
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    source_t = None
                    if region_mask is not None and irjs.placement == "before_step":
                        source_t = self._irjs_source(irjs, source_latents, inversion_trajectory, i, t, generator)
                    outputs = []
                    for frames in windows:
                        x = latents[:, :, frames]
                        if use_rad and i < rad.max_update_steps:
                            x, record, word_maps = self._rad_update(
                                x, i, t, cond, token_indices, attn_masks[:, frames], store, rad, float(step_sizes[i]), n_text_tokens, words
                            )
                            record["frames"] = [frames[0], frames[-1]]
                            rad_records.append(record)
                            if return_attention:
                                attention_sum, attention_count = _accumulate(attention_sum, attention_count, word_maps, frames, n_frames)
                        if source_t is not None:
                            x = irjs_ops.blend(x, source_t[:, :, frames], region_mask[:, :, frames])
                        x_in = torch.cat([x, x]) if do_cfg else x
                        x_in = self.scheduler.scale_model_input(x_in, t)
                        observe = return_attention and not use_rad and bool(regions) and i < rad.max_update_steps
                        if observe:  # attention pictures without RAD: the conditional half, detached
                            store.mode, store.observe_rows = "observe", len(frames)
                        noise = self.unet(x_in, t, encoder_hidden_states=text_embeddings).sample
                        if observe:
                            word_maps = self._word_maps(store.maps().float(), token_indices, rad, n_text_tokens)
                            store.mode = "off"
                            store.reset()
                            attention_sum, attention_count = _accumulate(attention_sum, attention_count, word_maps, frames, n_frames)
                        if do_cfg:
                            noise_u, noise_c = noise.chunk(2)
                            noise = noise_u + guidance_scale * (noise_c - noise_u)
                        outputs.append(self.scheduler.step(noise, t, x).prev_sample)
                    latents = merge_windows(outputs, windows, n_frames) if len(windows) > 1 else outputs[0]
                    if region_mask is not None and irjs.placement == "after_step":
                        prev = self._irjs_source(irjs, source_latents, inversion_trajectory, i + 1, None, generator)
                        latents = irjs_ops.blend(latents, prev, region_mask)
                    if callback_on_step_end is not None:
                        available = {"latents": latents, "source_t": source_t}
                        values = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                        result = callback_on_step_end(self, i, t, values) or {}
                        latents = result.get("latents", latents)
                    progress.update()

        attention = None
        if return_attention and attention_sum is not None:
            attention = (attention_sum / attention_count.clamp(min=1)).cpu()
        if output_type == "latent":
            frames_out = latents
        else:
            if region_mask is not None and irjs.decode_statistics == "source":
                frames_out = decode_with_reference_statistics(self.decode_latents, self.vae.decoder, source_latents, latents).cpu()
            else:
                frames_out = self.decode_latents(latents).cpu()
            if output_type in ("np", "pil"):
                frames_out = frames_out.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                frames_out = [Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames_out]
        self.maybe_free_model_hooks()
        return ReAtCoPipelineOutput(frames=frames_out, rad_losses=rad_records, attention_maps=attention)

    def _irjs_source(self, irjs: IRJSConfig, source_latents, trajectory, step_index, t, generator):
        """V at the noise level of sampling step `step_index` (step_index == steps → the clean V_0)."""
        n_steps = len(self.scheduler.timesteps)
        if step_index >= n_steps:
            return source_latents
        if irjs.source == "inversion":
            return trajectory[n_steps - step_index]
        timestep = self.scheduler.timesteps[step_index] if t is None else t
        noise = torch.randn(source_latents.shape, generator=generator, device=torch.device("cpu")).to(source_latents)
        return irjs_ops.noise_source(self.scheduler, source_latents, timestep, noise)


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
        return video
    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in video]
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1


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
