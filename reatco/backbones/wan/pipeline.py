"""WanReAtCoPipeline: ReAtCo (RAD + IRJS) on Wan 2.1 / 2.2, a diffusers `WanPipeline` with an edit call.

The components are WanPipeline's (`tokenizer`, `text_encoder` umT5, `vae` AutoencoderKLWan,
`scheduler` flow-matching Euler, `transformer`, `transformer_2`/`boundary_ratio` for Wan 2.2), so
`WanReAtCoPipeline.from_pretrained(folder_or_hub_id)` loads any Wan T2V folder in the diffusers
layout. The call takes the same arguments as `ReAtCoPipeline`'s where they mean the same thing
(prompt, video, objects, steps, guidance, rad, irjs, start_in_regions, output_type, callbacks) and
returns a `ReAtCoPipelineOutput`. RAD's losses and step schedule are `RADGuidance`'s, IRJS's blend
`InvariantRegion`'s, the regions `reatco.regions`'; what is Wan's own lives beside this file:
geometry (4k + 1 frames, latent frames as unions of pixel frames, 16-px tokens), the umT5 word
positions, the attn2 recorder, flow-matching re-noising and inversion.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from diffusers.utils import logging
from PIL import Image

from ...irjs import blend as irjs_ops
from ...config import IRJSConfig, RADConfig, StartInRegions, section_settings, validate_object
from ...regions.settings import value_of
from ...schema import choices
from ...regions.objects import EditObject
from ...errors import ConfigError, check_finite
from ...irjs.blend import InvariantRegion
from ...pipeline import ReAtCoPipelineOutput, _check_range, _video_tensor, encode_generator
from ...irjs.region_noise import tracked_noise
from ...regions.parsing import parse_region
from ...regions.region import object_masks
from . import geometry
from .flow import flow_inversion, level_timesteps, renoise, step_sigmas
from .guidance import WanDenoiser, WanRADGuidance
from .words import WanPromptTokens, tokenize_wan_prompt, word_positions

logger = logging.get_logger(__name__)


def default_rad_blocks(num_layers: int) -> list[int]:
    """The blocks whose attn2 RAD reads by default: the second quarter of the stack
    (num_layers // 4 … num_layers // 2 − 1; 1.3B's 30 blocks: 7…14; at least one block). A guess
    until measured on the trained shapes DiT (companion issue): early enough that the RAD forward
    stops after half the blocks, late enough that the words' maps have formed."""
    first = num_layers // 4
    return list(range(first, max(first + 1, num_layers // 2)))


def resolve_rad_blocks(blocks, num_layers: int, field: str = "rad_blocks") -> list[int]:
    """None → `default_rad_blocks`; else a non-empty list of distinct block indices 0 … num_layers − 1."""
    if blocks is None:
        return default_rad_blocks(num_layers)
    if isinstance(blocks, (int, str)) or not isinstance(blocks, Sequence) or not len(blocks):
        raise ConfigError(field, f"must be a non-empty list of transformer block indices (0…{num_layers - 1}), got {blocks!r}")
    bad = [b for b in blocks if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_layers]
    if bad:
        raise ConfigError(field, f"{bad} name no block: this transformer has blocks 0…{num_layers - 1}")
    if len(set(blocks)) != len(blocks):
        raise ConfigError(field, f"lists a block twice: {list(blocks)}")
    return sorted(blocks)


@dataclass
class WanEditPlan:
    """An edit's inputs checked against the model's tokenizer and configs only (no weights):
    the clip length Wan runs, the prompt's tokens, each object's region and token positions, the
    RAD blocks."""

    n_frames: int  # the clip's own frames
    run_frames: int  # 4k + 1: n_frames, or padded
    tokens: WanPromptTokens
    objects: list[EditObject]
    rad_blocks: list[int]


def plan_wan_edit(tokenizer, num_layers: int, prompt: str, objects: Sequence = (), n_frames: int = 17,
                  height: int = 480, width: int = 832, pad_frames: bool = False, rad_blocks=None,
                  max_sequence_length: int = 512, field: str = "objects") -> WanEditPlan:
    """Every check of an edit that needs no weights: 4k + 1 frames (`video.n_frames`, or padding
    with `pad_frames`), 16-px sizes, each object's region (parse_region) and word (its umT5 pieces
    in the prompt), the RAD blocks. ConfigErrors name the field."""
    run_frames = geometry.check_frame_count(n_frames, pad=pad_frames, field="video.n_frames")
    geometry.check_size(height, width)
    tokens = tokenize_wan_prompt(tokenizer, prompt, max_sequence_length)
    resolved, owner = [], {}
    for j, obj in enumerate(objects):
        if isinstance(obj, EditObject):
            resolved.append(obj)
            continue
        kind = validate_object(obj, f"{field}[{j}]")
        region = value_of(obj, "region") if kind == "region" else parse_region(
            obj, n_frames, height, width, geometry.TOKEN_PX, field=f"{field}[{j}]")
        positions = word_positions(tokenizer, tokens, value_of(obj, "word"), value_of(obj, "occurrence"),
                                   field=f"{field}[{j}].word", max_sequence_length=max_sequence_length)
        for p in positions:
            if p in owner:
                raise ConfigError(f"{field}[{j}].word", f"token {p} is already {field}[{owner[p]}]'s; each object needs its own word")
            owner[p] = j
        resolved.append(EditObject(value_of(obj, "word"), value_of(obj, "occurrence"), region, tuple(positions)))
    return WanEditPlan(n_frames, run_frames, tokens, resolved, resolve_rad_blocks(rad_blocks, num_layers))


def plan_from_folder(pretrained, prompt: str, objects: Sequence = (), **kwargs) -> WanEditPlan:
    """`plan_wan_edit` for a Wan folder, reading only its tokenizer and transformer/config.json: bad
    input is refused before any weights load."""
    from transformers import AutoTokenizer

    folder = os.fspath(pretrained)
    with open(os.path.join(folder, "transformer", "config.json")) as f:
        num_layers = int(json.load(f)["num_layers"])
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    return plan_wan_edit(tokenizer, num_layers, prompt, objects, **kwargs)


class FlowInvariantRegion(InvariantRegion):
    """IRJS on flow matching: V_σ = (1 − σ)·V_0 + σ·ε (ε fresh seeded noise), or the flow
    inversion's trajectory; the blend and its placement are InvariantRegion's."""

    def source(self, step_index: int, t=None, frames=None) -> torch.Tensor:
        n_steps = len(self.scheduler.timesteps)
        source, trajectory = self.source_latents, self.trajectory
        if frames is not None:
            source = source[:, :, frames]
            trajectory = None if trajectory is None else trajectory[:, :, :, frames]
        if step_index >= n_steps:
            return source
        if self.settings.source == "inversion":
            return trajectory[n_steps - step_index].to(source)
        noise = torch.randn(source.shape, generator=self.generator, device=torch.device("cpu")).to(source)
        return renoise(source, step_sigmas(self.scheduler)[step_index], noise)


class WanReAtCoPipeline(WanPipeline):
    """ReAtCo on Wan. `from_pretrained` takes a Wan T2V folder or hub id in the diffusers layout;
    its scheduler is replaced by `FlowMatchEulerDiscreteScheduler` with the model's shift (Wan ships
    UniPC; the flow inversion is the exact reverse of an Euler step), unless one is passed."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, scheduler=None, **kwargs):
        pipe = super().from_pretrained(pretrained_model_name_or_path, **({"scheduler": scheduler} if scheduler else {}), **kwargs)
        if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            config = pipe.scheduler.config
            shift = config.get("flow_shift", None) or config.get("shift", None) or 3.0
            logger.info("using FlowMatchEulerDiscreteScheduler(shift=%s) in place of %s", shift, type(pipe.scheduler).__name__)
            pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000), shift=shift)
        return pipe

    @property
    def denoiser(self) -> WanDenoiser:
        boundary = None
        if self.config.boundary_ratio is not None:
            boundary = self.config.boundary_ratio * self.scheduler.config.num_train_timesteps
        return WanDenoiser(self.transformer, self.transformer_2, boundary)

    @property
    def num_layers(self) -> int:
        model = self.transformer if self.transformer is not None else self.transformer_2
        return len(model.blocks)

    # ------------------------------------------------------------------ latents

    def _latent_statistics(self, device, dtype):
        z = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, dtype)
        # WanPipeline's spelling (1 / std, then divide by it): the same rounding as its decode
        inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1).to(device, dtype)
        return mean, inv_std

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1], F = 4k + 1 → normalised latents (1, C, k + 1, H/8, W/8), float32:
        the posterior's mode (deterministic), normalised as WanPipeline un-normalises before decoding."""
        pixels = video.to(self._execution_device, self.vae.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        z = self.vae.encode(pixels).latent_dist.mode().float()
        mean, inv_std = self._latent_statistics(z.device, z.dtype)
        return (z - mean) * inv_std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (1, C, F', h, w) → frames (F, 3, H, W) in [0, 1], as WanPipeline decodes."""
        z = latents.to(self._execution_device, self.vae.dtype)
        mean, inv_std = self._latent_statistics(z.device, z.dtype)
        video = self.vae.decode(z / inv_std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        return self.video_processor.postprocess_video(video, output_type="pt")[0].float()

    @torch.no_grad()
    def invert(self, source_latents: torch.Tensor, prompt_embeds: torch.Tensor, num_inference_steps: int,
               fixed_point_iters: int = 0) -> torch.Tensor:
        """Flow inversion of `source_latents` with the source prompt's embeddings, no guidance:
        the trajectory (steps + 1, 1, C, F, h, w) (entry k at sampling step steps − k's level)."""
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        denoiser = self.denoiser
        with self.progress_bar(total=num_inference_steps) as bar:
            return flow_inversion(lambda x, t: denoiser(x, t, prompt_embeds), source_latents, step_sigmas(self.scheduler),
                                  level_timesteps(self.scheduler), fixed_point_iters, progress=bar.update)

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        video=None,
        objects: Sequence = (),
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        negative_prompt: str = "",
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        source_latents: torch.Tensor | None = None,
        inversion_trajectory: torch.Tensor | None = None,
        source_prompt: str | None = None,
        inversion: bool = True,
        inversion_fixed_point_iters: int = 0,
        start_in_regions: str = "noise",
        rad: Any = None,
        irjs: Any = None,
        rad_blocks: Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        n_frames: int | None = None,
        pad_frames: bool = False,
        max_sequence_length: int = 512,
        output_type: str = "pt",
        return_attention: bool = False,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ):
        """Edit `video` ((F, 3, H, W) in [-1, 1], PIL frames or arrays; F = 4k + 1, or any F with
        `pad_frames`: the last frame repeated, the padded frames dropped from the output) so that each
        object's word lands in its region (RAD) while everything outside the regions stays the
        source's (IRJS). Without a video (and without `source_latents`) it samples from seeded noise
        as WanPipeline does (RAD only). `source_prompt`: the prompt the source is inverted with (by
        default `prompt`); `inversion=False` skips the inversion: the start is the source re-noised to
        the first step's σ with seeded noise and IRJS re-noises the source with fresh seeded noise.
        `rad_blocks`: the transformer blocks whose attn2 RAD reads (default `default_rad_blocks`)."""
        # 1. Everything checked before any model work
        rad = section_settings("rad", rad, steps=num_inference_steps, field="rad")
        irjs = section_settings("irjs", irjs, steps=num_inference_steps, field="irjs")
        if start_in_regions not in choices(StartInRegions):
            raise ConfigError("start_in_regions", f"must be one of {', '.join(choices(StartInRegions))}, got {start_in_regions!r}")
        if irjs.decode_statistics == "source":
            raise ConfigError("irjs.decode_statistics", "does not apply to Wan: its causal VAE normalises with RMS norms "
                                                        "over channels at each position (no frame statistics to borrow from "
                                                        "the source); use edit")
        if rad.anchor_step_ratios:
            raise ConfigError("rad.anchor_step_ratios", "anchoring is not implemented for Wan yet: use []")
        if isinstance(inversion_fixed_point_iters, bool) or not isinstance(inversion_fixed_point_iters, int) \
                or inversion_fixed_point_iters < 0:
            raise ConfigError("inversion_fixed_point_iters", f"must be an integer ≥ 0 (0 = Euler), got {inversion_fixed_point_iters!r}")
        if inversion_trajectory is not None and inversion_trajectory.shape[0] != num_inference_steps + 1:
            raise ConfigError("inversion_trajectory", f"has {inversion_trajectory.shape[0]} levels; {num_inference_steps} "
                                                      f"steps need {num_inference_steps + 1} (invert with the same steps)")
        if output_type not in ("pt", "np", "pil", "latent"):
            raise ValueError(f"output_type must be pt, np, pil or latent, got {output_type!r}")
        if self.config.expand_timesteps:
            raise NotImplementedError("Wan 2.2 TI2V (expand_timesteps) is not supported")
        device = self._execution_device
        if video is not None:
            video = _video_tensor(video)
            n_frames, height, width = video.shape[0], video.shape[2], video.shape[3]
        elif source_latents is not None:
            n_frames = n_frames or (source_latents.shape[2] - 1) * self.vae_scale_factor_temporal + 1
            height = height or source_latents.shape[3] * self.vae_scale_factor_spatial
            width = width or source_latents.shape[4] * self.vae_scale_factor_spatial
        else:
            n_frames, height, width = n_frames or 81, height or 480, width or 832
        plan = plan_wan_edit(self.tokenizer, self.num_layers, prompt, objects, n_frames, height, width, pad_frames,
                             rad_blocks, max_sequence_length)
        if irjs.enabled and irjs.source == "inversion" and not inversion:
            irjs = section_settings("irjs", {**vars(irjs), "source": "noise"}, steps=num_inference_steps, field="irjs")
        run_frames = plan.run_frames
        has_source = video is not None or source_latents is not None

        # 2. The source: latents, inversion trajectory, start
        self._guidance_scale = guidance_scale
        self._guidance_scale_2 = guidance_scale_2 if guidance_scale_2 is not None else guidance_scale
        self._interrupt, self._current_timestep = False, None
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=self.do_classifier_free_guidance,
            max_sequence_length=max_sequence_length, device=device)
        model_dtype = (self.transformer or self.transformer_2).dtype
        prompt_embeds = prompt_embeds.to(model_dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(model_dtype)
        if video is not None and source_latents is None:
            source_latents = self.encode_video(geometry.pad_clip(video, run_frames))
        if has_source and inversion and inversion_trajectory is None:
            source_embeds = prompt_embeds if source_prompt in (None, prompt) else self.encode_prompt(
                prompt=source_prompt, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
                device=device)[0].to(model_dtype)
            inversion_trajectory = self.invert(source_latents, source_embeds, num_inference_steps, inversion_fixed_point_iters)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        sigmas = step_sigmas(self.scheduler)
        shape_channels = (self.transformer or self.transformer_2).config.in_channels
        if not has_source:
            latents = self.prepare_latents(1, shape_channels, height, width, run_frames, torch.float32, device, generator, latents)
        elif latents is None:
            if inversion:
                latents = inversion_trajectory[-1].to(device, torch.float32)
            else:
                noise = torch.randn(source_latents.shape, generator=generator, device=torch.device("cpu")).to(device)
                latents = renoise(source_latents.float(), sigmas[0], noise)

        # 3. The objects: RAD masks on the token grid, latent cells, per latent frame (unions of pixel frames)
        words = [o.word for o in plan.objects]
        regions = [o.region for o in plan.objects]
        lat_h, lat_w = latents.shape[-2:]
        tok_h, tok_w = lat_h // 2, lat_w // 2
        attn_masks = self._latent_frame_masks(regions, n_frames, run_frames, tok_h, tok_w, rad.box_grid)
        object_cells = self._latent_frame_masks(regions, n_frames, run_frames, lat_h, lat_w, rad.box_grid) >= 0.5
        cells = irjs_ops.latent_region_mask(object_cells.float(), lat_h, lat_w).to(device) if regions else None
        invariant = None
        if irjs.enabled and regions and has_source:
            invariant = FlowInvariantRegion(self.scheduler, irjs, cells, source_latents.float(),
                                            inversion_trajectory if irjs.source == "inversion" else None, generator)
        elif irjs.enabled and regions:
            logger.warning("IRJS needs a source video: skipped for this edit")
        if has_source and regions and start_in_regions != "inversion":
            noise = torch.randn(latents.shape, generator=generator, device=torch.device("cpu")).to(device, latents.dtype)
            if start_in_regions == "tracked_noise":
                noise = torch.stack([tracked_noise(object_cells, n, generator) for n in noise])
            latents = irjs_ops.blend(noise, latents, cells)

        # 4. RAD
        use_rad = rad.enabled and bool(regions) and rad.max_update_steps > 0
        guidance = None
        if (use_rad or return_attention) and regions:
            # the maps are renormalised over the prompt's real tokens: its pieces, and `</s>` unless
            # rad.normalize_eot (as on the UNet); never over the zero padding
            n_norm = plan.tokens.n_real - (1 if rad.normalize_eot else 0)
            guidance = WanRADGuidance(self.denoiser, plan.rad_blocks, prompt_embeds, words,
                                      [o.token_indices for o in plan.objects], n_norm, attn_masks.to(device), rad,
                                      len(timesteps))
        attention_sum, attention_count = None, 0
        denoiser = self.denoiser

        # 5. The loop: RAD update, IRJS blend, the expert with guidance, the Euler step
        with contextlib.ExitStack() as stack:
            if guidance is not None:
                stack.enter_context(guidance.attached(differentiate=use_rad))
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    self._current_timestep = t
                    scale = self._guidance_scale if denoiser.expert(t) is self.transformer else self._guidance_scale_2
                    word_maps = None
                    if use_rad and guidance.runs_at(i):
                        latents, _, word_maps, _ = guidance.update(latents, i, t)
                    if invariant is not None:
                        latents = invariant.before_step(latents, i, t, list(range(latents.shape[2])))
                    observe = return_attention and guidance is not None and word_maps is None and i < rad.max_update_steps
                    with guidance.observing(latents.shape[2]) if observe else contextlib.nullcontext({}) as observed:
                        velocity = denoiser(latents, t, prompt_embeds)
                    if observed:
                        word_maps = observed["word_maps"]
                    if return_attention and word_maps is not None:
                        attention_sum = word_maps.float() if attention_sum is None else attention_sum + word_maps.float()
                        attention_count += 1
                    if self.do_classifier_free_guidance:
                        velocity_uncond = denoiser(latents, t, negative_prompt_embeds)
                        velocity = velocity_uncond + scale * (velocity - velocity_uncond)
                    latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                    if invariant is not None:
                        latents = invariant.after_step(latents, i)
                    if callback_on_step_end is not None:
                        available = {"latents": latents, "prompt_embeds": prompt_embeds,
                                     "negative_prompt_embeds": negative_prompt_embeds}
                        result = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}) or {}
                        latents = result.get("latents", latents)
                    progress.update()
        self._current_timestep = None

        # 6. Decode, the padded frames dropped
        check_finite(latents, "in the final latents", "lower rad.step_size or guidance_scale, or use float32")
        attention = (attention_sum / attention_count).cpu() if attention_sum is not None else None
        if output_type == "latent":
            frames_out = latents
        else:
            frames_out = self.decode_latents(latents)
            if invariant is not None and irjs.decode_outside == "source":
                frames_out = self._keep_source_pixels(frames_out, self.decode_latents(source_latents), invariant.mask)
            frames_out = frames_out[: plan.n_frames].cpu()
            check_finite(frames_out, "in the decoded frames", "the VAE overflowed: decode in float32")
            if output_type in ("np", "pil"):
                frames_out = frames_out.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                frames_out = [Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames_out]
        self.maybe_free_model_hooks()
        records = guidance.records if guidance is not None else []
        if not return_dict:
            return frames_out, records, attention
        return ReAtCoPipelineOutput(frames=frames_out, rad_losses=records, attention_maps=attention,
                                    attention_by_step=None)

    def _keep_source_pixels(self, edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """irjs.decode_outside: source — outside the regions' latent cells (`mask` (1, 1, latent
        frames, h, w), 1 = edited) each pixel frame is the source's decode: a pixel frame takes the
        cells of the latent frame that covers it, each cell its 8 × 8 pixels."""
        groups = geometry.latent_frame_groups(edited.shape[0], self.vae_scale_factor_temporal)
        index = torch.tensor([g for g, frames in enumerate(groups) for _ in frames], device=mask.device)
        cells = mask[0, 0].index_select(0, index)[:, None].float()  # (F, 1, h, w)
        pixels = torch.nn.functional.interpolate(cells, scale_factor=self.vae_scale_factor_spatial, mode="nearest")
        pixels = pixels.to(edited.device, edited.dtype)
        return edited * pixels + source.to(edited) * (1 - pixels)

    @staticmethod
    def _latent_frame_masks(regions, n_frames: int, run_frames: int, grid_h: int, grid_w: int, box_grid: str) -> torch.Tensor:
        """(J, latent frames, grid_h, grid_w): each object's masks on the clip's pixel frames (the
        padded frames repeat the last one's), then the union over the pixel frames of each latent frame."""
        masks = object_masks(regions, n_frames, grid_h, grid_w, box_grid)
        if run_frames > n_frames:
            masks = torch.cat([masks, masks[:, -1:].expand(-1, run_frames - n_frames, -1, -1)], dim=1)
        return geometry.latent_frame_union(masks)
