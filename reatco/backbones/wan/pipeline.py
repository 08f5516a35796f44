"""WanReAtCoPipeline: ReAtCo (RAD + IRJS) on Wan 2.1 / 2.2, a diffusers `WanPipeline` with an edit call.

The components are WanPipeline's (`tokenizer`, `text_encoder` umT5, `vae` AutoencoderKLWan,
`scheduler` flow-matching Euler, `transformer`, `transformer_2`/`boundary_ratio` for Wan 2.2), so
`WanReAtCoPipeline.from_pretrained(folder_or_hub_id)` loads any Wan T2V folder in the diffusers
layout. The call takes the same arguments as `ReAtCoPipeline`'s where they mean the same thing
(prompt, video, objects, steps, guidance, rad, irjs, start_in_regions, output_type, callbacks) and
returns a `ReAtCoPipelineOutput` in diffusers' video convention (`output_type="np"`: frames
(1, F, H, W, 3)). RAD is `RADGuidance` and IRJS `InvariantRegion`, both driving the pipeline's
`WanBackbone` (backbone.py: the model call with both experts, the VAE, the umT5 text, the attn2
recorder, flow-matching re-noising and inversion); the regions are `reatco.regions`'.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from diffusers.utils import logging

from ...config import StartInRegions, section_settings, validate_object
from ...errors import ConfigError, check_finite
from ...irjs import blend as irjs_ops
from ...irjs.blend import InvariantRegion
from ...irjs.region_noise import tracked_noise
from ...pipeline import ReAtCoPipelineOutput, postprocess_video
from ...rad.anchoring import anchor_object_latents
from ...rad.guidance import AttentionObservations, RADGuidance
from ...regions.objects import EditObject
from ...regions.parsing import parse_region
from ...regions.region import object_masks
from ...regions.settings import object_settings
from ...schema import choices
from ...video import check_video_tensor, video_input
from . import geometry
from . import windows as wan_windows
from .backbone import WanBackbone, default_rad_blocks, resolve_rad_blocks
from .words import WanPromptTokens, tokenize_wan_prompt, word_positions

logger = logging.get_logger(__name__)


__all__ = ["WanReAtCoPipeline", "WanEditPlan", "plan_wan_edit", "plan_from_folder", "default_rad_blocks", "resolve_rad_blocks"]


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
    geometry: geometry.WanGeometry = geometry.WAN21  # the model's VAE factors and patch: its token size


def plan_wan_edit(tokenizer, num_layers: int, prompt: str, objects: Sequence = (), n_frames: int = 17,
                  height: int = 480, width: int = 832, pad_frames: bool = False, rad_blocks=None,
                  max_sequence_length: int = 512, field: str = "objects",
                  model_geometry: geometry.WanGeometry = geometry.WAN21) -> WanEditPlan:
    """Every check of an edit that needs no weights: 4k + 1 frames (`video.n_frames`, or padding
    with `pad_frames`), sizes in whole tokens, each object's region (parse_region, on the token
    grid) and word (its umT5 pieces in the prompt), the RAD blocks. `model_geometry`: the model's
    (read_geometry / geometry_of; Wan 2.1's by default). ConfigErrors name the field."""
    run_frames = geometry.check_frame_count(n_frames, pad=pad_frames, field="video.n_frames",
                                            temporal=model_geometry.temporal)
    geometry.check_size(height, width, model_geometry)
    tokens = tokenize_wan_prompt(tokenizer, prompt, max_sequence_length)
    resolved, owner = [], {}
    for j, obj in enumerate(objects):
        if isinstance(obj, EditObject):
            resolved.append(obj)
            continue
        obj = object_settings(obj, f"{field}[{j}]")  # a dict from Python, typed once
        kind = validate_object(obj, f"{field}[{j}]")
        region = obj.region if kind == "region" else parse_region(
            obj, n_frames, height, width, model_geometry.token_px, field=f"{field}[{j}]")
        positions = word_positions(tokenizer, tokens, obj.word, obj.occurrence,
                                   field=f"{field}[{j}].word", max_sequence_length=max_sequence_length)
        for p in positions:
            if p in owner:
                raise ConfigError(f"{field}[{j}].word", f"token {p} is already {field}[{owner[p]}]'s; each object needs its own word")
            owner[p] = j
        resolved.append(EditObject(obj.word, obj.occurrence, region, tuple(positions)))
    return WanEditPlan(n_frames, run_frames, tokens, resolved, resolve_rad_blocks(rad_blocks, num_layers), model_geometry)


def plan_from_folder(pretrained, prompt: str, objects: Sequence = (), **kwargs) -> WanEditPlan:
    """`plan_wan_edit` for a Wan folder, reading only its tokenizer and its transformer's and VAE's
    config.json (the layer count, the token size): bad input is refused before any weights load."""
    from transformers import AutoTokenizer

    folder = os.fspath(pretrained)
    with open(os.path.join(folder, "transformer", "config.json")) as f:
        num_layers = int(json.load(f)["num_layers"])
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    return plan_wan_edit(tokenizer, num_layers, prompt, objects, model_geometry=geometry.read_geometry(folder), **kwargs)


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
    def backbone(self) -> WanBackbone:
        """The model as RAD, IRJS and the loop see it (reatco/backbones/base.py): a view over the
        current components (both experts of Wan 2.2), on the execution device."""
        return WanBackbone.from_pipeline(self)

    @property
    def num_layers(self) -> int:
        model = self.transformer if self.transformer is not None else self.transformer_2
        return len(model.blocks)

    @property
    def model_geometry(self) -> geometry.WanGeometry:
        """The VAE's factors and the transformer's patch, read from the loaded modules: one token
        is `model_geometry.token_px` px (16 on Wan 2.1)."""
        return geometry.geometry_of(self.vae, self.transformer if self.transformer is not None else self.transformer_2)

    # ------------------------------------------------------------------ latents

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1], F = 4k + 1 → normalised latents (1, C, k + 1, H/s, W/s), s the
        VAE's spatial factor, float32 (WanBackbone.encode_video: the posterior's mode)."""
        return self.backbone.encode_video(video)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (1, C, F', h, w) → frames (F, 3, H, W) in [0, 1], as WanPipeline decodes."""
        return self.backbone.decode_latents(latents)

    def invert(self, source_latents: torch.Tensor, prompt_embeds: torch.Tensor, num_inference_steps: int,
               fixed_point_iters: int = 0, windows: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Flow inversion of `source_latents` with the source prompt's embeddings, no guidance:
        the trajectory (steps + 1, 1, C, F, h, w) (entry k at sampling step steps − k's level)."""
        return self.backbone.invert(source_latents, prompt_embeds, num_inference_steps, fixed_point_iters=fixed_point_iters,
                                    windows=windows)

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
        window: Any = None,
        rad_blocks: Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        n_frames: int | None = None,
        pad_frames: bool = False,
        max_sequence_length: int = 512,
        output_type: str = "np",
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
        `window`: the config's window section (a dict or WindowConfig: size and stride in pixel
        frames; null size: the whole clip in one pass): longer clips are denoised in overlapping
        windows of latent frames, blended (windows.py). `rad_blocks`: the transformer blocks whose attn2 RAD
        reads (default `rad.blocks`, then `default_rad_blocks`). The frames come back as diffusers' video
        pipelines give them: "np" (1, F, H, W, 3), "pt" (1, F, 3, H, W), "pil" [[images]], in [0, 1]; "latent"
        the final latents (1, C, latent frames, h, w)."""
        # 1. Everything checked before any model work
        rad = section_settings("rad", rad, steps=num_inference_steps, field="rad")
        irjs = section_settings("irjs", irjs, steps=num_inference_steps, field="irjs")
        window = section_settings("window", window, field="window")
        if start_in_regions not in choices(StartInRegions):
            raise ConfigError("start_in_regions", f"must be one of {', '.join(choices(StartInRegions))}, got {start_in_regions!r}")
        if irjs.decode_statistics == "source":
            raise ConfigError("irjs.decode_statistics", "does not apply to Wan: its causal VAE normalises with RMS norms "
                                                        "over channels at each position (no frame statistics to borrow from "
                                                        "the source); use edit")
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
            video = video_input(video)
            check_video_tensor(video, "video")
            n_frames, height, width = video.shape[0], video.shape[2], video.shape[3]
        elif source_latents is not None:
            n_frames = n_frames or (source_latents.shape[2] - 1) * self.vae_scale_factor_temporal + 1
            height = height or source_latents.shape[3] * self.vae_scale_factor_spatial
            width = width or source_latents.shape[4] * self.vae_scale_factor_spatial
        else:
            n_frames, height, width = n_frames or 81, height or 480, width or 832
        plan = plan_wan_edit(self.tokenizer, self.num_layers, prompt, objects, n_frames, height, width, pad_frames,
                             rad.blocks if rad_blocks is None else rad_blocks, max_sequence_length,
                             model_geometry=self.model_geometry)
        if irjs.enabled and irjs.source == "inversion" and not inversion:
            irjs = section_settings("irjs", {**vars(irjs), "source": "noise"}, steps=num_inference_steps, field="irjs")
        run_frames = plan.run_frames
        windows = wan_windows.latent_windows(run_frames, window.size, window.stride, plan.geometry.temporal)
        has_source = video is not None or source_latents is not None

        # 2. The source: latents, inversion trajectory, start
        backbone = WanBackbone.from_pipeline(self, max_sequence_length)
        self._guidance_scale = guidance_scale
        self._guidance_scale_2 = guidance_scale_2 if guidance_scale_2 is not None else guidance_scale
        self._interrupt, self._current_timestep = False, None
        model_dtype = backbone.dtype
        prompt_embeds = backbone.encode_prompt(prompt).to(model_dtype)
        negative_prompt_embeds = None
        if self.do_classifier_free_guidance:
            negative_prompt_embeds = backbone.encode_prompt(negative_prompt or "").to(model_dtype)
        if video is not None and source_latents is None:
            source_latents = backbone.encode_video(geometry.pad_clip(video, run_frames))
        if has_source and inversion and inversion_trajectory is None:
            source_embeds = prompt_embeds if source_prompt in (None, prompt) else backbone.encode_prompt(source_prompt).to(model_dtype)
            inversion_trajectory = self.invert(source_latents, source_embeds, num_inference_steps, inversion_fixed_point_iters,
                                               windows=windows)
        timesteps = backbone.set_timesteps(num_inference_steps)
        self._num_timesteps = len(timesteps)
        if not has_source:
            latents = self.prepare_latents(1, backbone.latent_channels, height, width, run_frames, torch.float32, device,
                                           generator, latents)
        elif latents is None:
            if inversion:
                latents = inversion_trajectory[-1].to(device, torch.float32)
            else:
                noise = torch.randn(source_latents.shape, generator=generator, device=torch.device("cpu")).to(device)
                latents = backbone.renoise_source(source_latents.float(), timesteps[0], noise)

        # 3. The objects: RAD masks on the token grid, latent cells, per latent frame (unions of pixel frames)
        words = [o.word for o in plan.objects]
        regions = [o.region for o in plan.objects]
        lat_h, lat_w = latents.shape[-2:]
        tok_h, tok_w = backbone.attention_grid(lat_h * backbone.spatial_factor, lat_w * backbone.spatial_factor)
        temporal = backbone.temporal_factor
        attn_masks = self._latent_frame_masks(regions, n_frames, run_frames, tok_h, tok_w, rad.box_grid, temporal)
        # each pixel frame's own latent cells (decode_outside: source_frames), and their union per latent frame
        pixel_cells = self._pixel_frame_masks(regions, n_frames, run_frames, lat_h, lat_w, rad.box_grid) >= 0.5
        object_cells = geometry.latent_frame_union(pixel_cells.float(), temporal) >= 0.5
        cells = irjs_ops.latent_region_mask(object_cells.float(), lat_h, lat_w).to(device) if regions else None
        invariant = None
        if irjs.enabled and regions and has_source:
            trajectory = inversion_trajectory.to(device, torch.float32) if irjs.source == "inversion" else None
            invariant = InvariantRegion(backbone, irjs, cells, source_latents.float(), trajectory, generator)
        elif irjs.enabled and regions:
            logger.warning("IRJS needs a source video: skipped for this edit")
        if has_source and regions and start_in_regions != "inversion":
            noise = torch.randn(latents.shape, generator=generator, device=torch.device("cpu")).to(device, latents.dtype)
            if start_in_regions == "tracked_noise":
                noise = torch.stack([tracked_noise(object_cells, n, generator) for n in noise])
            latents = irjs_ops.blend(noise, latents, cells)

        # 4. RAD: the maps are renormalised over the prompt's real tokens (its pieces, and `</s>` unless
        # rad.normalize_eot, as on the UNet), never over the zero padding
        use_rad = rad.enabled and bool(regions) and rad.max_update_steps > 0
        guidance = None
        # the steps after which every latent frame of an object takes its region from its best-attended one
        anchor_steps = {int(r * num_inference_steps) for r in rad.anchor_step_ratios} if use_rad else set()
        if (use_rad or return_attention) and regions:
            layers = backbone.attention_layers(backbone.token_px, blocks=plan.rad_blocks, blocks_field="rad_blocks")
            observations = AttentionObservations(latents.shape[2], return_attention, (), anchor_steps)
            guidance = RADGuidance(backbone, layers, prompt_embeds, words, [o.token_indices for o in plan.objects],
                                   attn_masks.to(device), rad, backbone.text_token_count(plan.tokens, rad.normalize_eot),
                                   len(timesteps), observations)

        # 5. The loop: per window of latent frames the RAD update, the IRJS blend and the expert with
        # guidance; one Euler step for all windows (stacked in the batch: it is elementwise), their
        # results blended where they overlap; then IRJS after the step on the whole clip
        n_latent = latents.shape[2]
        whole = len(windows) == 1  # one window of every latent frame: the unwindowed call
        weights = None if whole else wan_windows.blend_weights(windows, n_latent)
        with contextlib.ExitStack() as stack:
            if guidance is not None:
                stack.enter_context(guidance.attached(differentiate=use_rad))
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    self._current_timestep = t
                    scale = self._guidance_scale if backbone.expert(t) is self.transformer else self._guidance_scale_2
                    inputs, velocities = [], []
                    for frames in windows:
                        x = latents if whole else latents[:, :, frames]
                        window = None if whole else frames  # RAD's and the observer's masks of these frames
                        word_maps = presence = None  # this window's, from the RAD pass or observed
                        rad_here = use_rad and guidance.runs_at(i)
                        if rad_here:
                            x, _, word_maps, presence = guidance.update(x, i, t, frames=window)
                        if invariant is not None:
                            x = invariant.before_step(x, i, t, frames, len(windows))
                        pictures = return_attention and guidance is not None and not rad_here and i < rad.max_update_steps
                        observe = pictures or (i in anchor_steps and not rad_here)  # an anchor step's presence
                        if guidance is None:
                            velocity = backbone.predict(x, t, prompt_embeds)
                        else:
                            velocity = guidance.observed_call(lambda: backbone.predict(x, t, prompt_embeds), i, frames,
                                                              window, observe, pictures, word_maps, presence)
                        if self.do_classifier_free_guidance:
                            velocity_uncond = backbone.predict(x, t, negative_prompt_embeds)
                            velocity = velocity_uncond + scale * (velocity - velocity_uncond)
                        inputs.append(x)
                        velocities.append(velocity)
                    stepped = backbone.step(torch.cat(velocities), t, torch.cat(inputs))
                    latents = stepped if whole else wan_windows.blend(list(stepped.split(1)), windows, weights)
                    if invariant is not None:
                        latents = invariant.after_step(latents, i)
                    if i in anchor_steps:  # every latent frame of an object from its best-attended one on
                        latents, _ = anchor_object_latents(latents, object_cells.to(latents.device),
                                                           guidance.observations.presence(i))
                    if callback_on_step_end is not None:
                        available = {"latents": latents, "prompt_embeds": prompt_embeds,
                                     "negative_prompt_embeds": negative_prompt_embeds}
                        result = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}) or {}
                        latents = result.get("latents", latents)
                    progress.update()
        self._current_timestep = None

        # 6. Decode (the source's own pixels outside the regions where irjs.decode_outside asks), the padded frames dropped
        check_finite(latents, "in the final latents", "lower rad.step_size or guidance_scale, or use float32")
        attention = guidance.observations.mean_maps() if return_attention and guidance is not None else None
        if output_type == "latent":
            frames_out = latents
        else:
            keep_source = invariant is not None and irjs.decode_outside in ("source", "source_frames")
            keep = None
            if keep_source:  # source: the latent frames' cells IRJS kept; source_frames: each pixel frame's own
                keep = (invariant.mask if irjs.decode_outside == "source"
                        else irjs_ops.latent_region_mask(pixel_cells, lat_h, lat_w).to(device))
            frames = backbone.decode_latents(latents, source_latents if keep_source else None, reference_statistics=False,
                                             keep_reference_outside=keep)
            frames = frames[: plan.n_frames].cpu()
            check_finite(frames, "in the decoded frames", "the VAE overflowed: decode in float32")
            frames_out = postprocess_video(frames, output_type)
        self.maybe_free_model_hooks()
        records = guidance.records if guidance is not None else []
        if not return_dict:
            return frames_out, records, attention
        return ReAtCoPipelineOutput(frames=frames_out, rad_losses=records, attention_maps=attention,
                                    attention_by_step=None)

    @staticmethod
    def _pixel_frame_masks(regions, n_frames: int, run_frames: int, grid_h: int, grid_w: int, box_grid: str) -> torch.Tensor:
        """(J, run_frames, grid_h, grid_w): each object's masks on the clip's pixel frames, the padded
        frames repeating the last one's."""
        masks = object_masks(regions, n_frames, grid_h, grid_w, box_grid)
        if run_frames > n_frames:
            masks = torch.cat([masks, masks[:, -1:].expand(-1, run_frames - n_frames, -1, -1)], dim=1)
        return masks

    @staticmethod
    def _latent_frame_masks(regions, n_frames: int, run_frames: int, grid_h: int, grid_w: int, box_grid: str,
                            temporal: int = geometry.TEMPORAL_FACTOR) -> torch.Tensor:
        """(J, latent frames, grid_h, grid_w): each object's masks on the clip's pixel frames (the
        padded frames repeat the last one's), then the union over the pixel frames of each latent frame."""
        masks = WanReAtCoPipeline._pixel_frame_masks(regions, n_frames, run_frames, grid_h, grid_w, box_grid)
        return geometry.latent_frame_union(masks, temporal)
