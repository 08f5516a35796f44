"""The Tune-A-Video UNet (Stable Diffusion 1.x inflated to video, DDIM) as a `Backbone`.

A thin view over the pipeline's components: it owns nothing, so a component swapped on the
pipeline (a tuned UNet, `.to("cuda")`, offloading) is what the next view sees.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from ...errors import ConfigError
from ...irjs.blend import noise_source
from ...irjs.decoding import decode_chunks_with_reference_statistics
from ...rad.attention_maps import AttentionStore
from ...tokens import PromptTokens, encode_prompt, tokenize_prompt, word_token_indices
from ..base import Backbone
from ..inversion import ddim_inversion
from .layers import cross_attention_scales, rad_attention_layers
from .recording import record_cross_attention


class TuneAVideoBackbone(Backbone):
    """unet: a TuneAVideoUNet; vae, text_encoder, tokenizer, scheduler (DDIM) as in Stable
    Diffusion. A part a use does not need may be None (RAD alone needs only the UNet)."""

    name = "tav"

    def __init__(self, unet, vae=None, text_encoder=None, tokenizer=None, scheduler=None, device=None,
                 progress: bool = True):
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = unet, vae, text_encoder, tokenizer, scheduler
        self.device = device if device is not None or unet is None else unet.device
        self.progress = progress
        # SD's VAE halves the size at each block but the last: 8 for SD v1.x
        self.spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.latent_channels = unet.config.in_channels if unet is not None else None

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # ------------------------------------------------------------------ geometry

    def check_frames(self, n_frames: int, field: str = "video.n_frames") -> None:
        if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
            raise ConfigError(field, f"must be a number of frames ≥ 1, got {n_frames!r}")

    def frame_groups(self, n_frames: int) -> list[list[int]]:
        return [[f] for f in range(n_frames)]  # one latent frame per pixel frame

    # ------------------------------------------------------------------ the VAE

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        pixels = video.to(self.device, self.vae.dtype)
        dist = self.vae.encode(pixels).latent_dist
        latents = dist.sample(generator=generator) * self.vae.config.scaling_factor
        return latents.permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, reference: torch.Tensor | None = None, *,
                       reference_statistics: bool = True, keep_reference_outside: torch.Tensor | None = None) -> torch.Tensor:
        """With VAE slicing on, the edit and the reference are decoded one frame at a time,
        interleaved, so only one frame's activations are ever held."""
        def to_vae(z):
            return (z[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor).to(self.vae.dtype)

        def decode(z):
            return self.vae.decode(z).sample

        frames = to_vae(latents)
        if reference is None:
            if keep_reference_outside is not None:
                raise ValueError("keep_reference_outside needs the reference latents whose pixels it keeps")
            images = decode(frames)
        else:
            if reference.shape != latents.shape:
                raise ValueError(f"reference {tuple(reference.shape)} and latents {tuple(latents.shape)} must have one shape")
            per_chunk = 1 if self.vae.use_slicing else frames.shape[0]
            masks = None
            if keep_reference_outside is not None:  # (1, 1, F, h, w) → per frame (F, 1, h, w)
                masks = keep_reference_outside[0].permute(1, 0, 2, 3).split(per_chunk)
            chunks = decode_chunks_with_reference_statistics(decode, self.vae.decoder, to_vae(reference.to(latents)).split(per_chunk),
                                                             frames.split(per_chunk), masks, statistics=reference_statistics)
            images = torch.cat(chunks)
        return (images.float() / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ text

    def tokenize(self, prompt: str | PromptTokens) -> PromptTokens:
        return tokenize_prompt(self.tokenizer, prompt)

    def word_token_indices(self, prompt: str | PromptTokens, word: str, occurrence: int | None = None,
                           field: str = "word") -> list[int]:
        return word_token_indices(self.tokenizer, prompt, word, occurrence, field)

    @torch.no_grad()
    def encode_prompt(self, prompt: str | PromptTokens) -> torch.Tensor:
        return encode_prompt(self.text_encoder, self.tokenize(prompt), self.device)

    def text_token_count(self, tokens: PromptTokens, prompt_only: bool) -> int:
        # CLIP pads to model_max_length with EOT/padding tokens the official softmax spans
        return len(tokens.ids) - 2 if prompt_only else tokens.model_max_length - 2

    # ------------------------------------------------------------------ attention RAD reads

    def attention_layers(self, cell_px: int, field: str = "model.attention_cell_px", blocks: Sequence[int] | None = None,
                         blocks_field: str = "rad.blocks") -> list[str]:
        if blocks is not None:  # the UNet's grid levels pick its layers
            raise ConfigError(blocks_field, "applies to DiT backbones (Wan) only: the UNet's RAD layers are those on "
                                            f"the {field} grid; use null")
        return rad_attention_layers(self.unet, self.spatial_factor, cell_px, field)

    def attention_cell_sizes(self) -> list[int]:
        return sorted({s * self.spatial_factor for s in cross_attention_scales(self.unet).values()})

    def attention_grid(self, height: int, width: int, cell_px: int) -> tuple[int, int]:
        return height // cell_px, width // cell_px

    def recording(self, layers: Sequence[str], store: AttentionStore, n_text_tokens: int | None = None):
        return record_cross_attention(self.unet, layers, store)  # every column, as the model's probabilities

    @contextlib.contextmanager
    def recording_features(self):
        """The last up block's output: the finest level the UNet has, one row per frame."""
        features: list[torch.Tensor] = []
        hook = self.unet.up_blocks[-1].register_forward_hook(lambda module, args, output: features.append(output.float()))
        try:
            yield features
        finally:
            hook.remove()

    # ------------------------------------------------------------------ one step

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        return self.scheduler.timesteps

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def scale_model_input(self, latents: torch.Tensor, t) -> torch.Tensor:
        return self.scheduler.scale_model_input(latents, t)

    def predict(self, latents: torch.Tensor, t, prompt_embeds: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, t, encoder_hidden_states=prompt_embeds).sample

    def step(self, model_output: torch.Tensor, t, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(model_output, t, latents).prev_sample

    def renoise_source(self, source: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        return noise_source(self.scheduler, source, t, noise)

    @torch.no_grad()
    def invert(self, source_latents: torch.Tensor, prompt: str, num_inference_steps: int,
               guidance_scale: float = 1.0, progress: bool | None = None) -> torch.Tensor:
        """DDIM inversion (reatco/backbones/inversion.py)."""
        cond = self.encode_prompt(prompt)
        uncond = self.encode_prompt("") if guidance_scale > 1.0 else None
        return ddim_inversion(self.unet, self.scheduler, source_latents, cond, num_inference_steps, guidance_scale, uncond,
                              progress=self.progress if progress is None else progress)

    # ------------------------------------------------------------------ RAD's backward pass

    @contextlib.contextmanager
    def differentiable(self, gradient_checkpointing: bool = False):
        """Frozen weights (RAD needs ∂L/∂x only: autograd then keeps no activations for weight
        gradients) and, on request, the UNet's gradient checkpointing; both restored on exit."""
        flags = [(p, p.requires_grad) for p in self.unet.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        was = self.unet.is_gradient_checkpointing
        if gradient_checkpointing and not was:
            self.unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            if gradient_checkpointing and not was:
                self.unet.disable_gradient_checkpointing()
            for p, flag in flags:
                p.requires_grad_(flag)
