"""Wan 2.1 / 2.2 (diffusers' WanPipeline components, a flow-matching video DiT) as a `Backbone`.

A thin view over the pipeline's components, as the UNet's is: it owns nothing, so a component
swapped on the pipeline (`.to("cuda")`, offloading) is what the next view sees. What is Wan's own
lives beside it: geometry (4k + 1 frames, latent frames covering 4 pixel frames, tokens of the
VAE's factor × the patch in px, read from the model: 16 on Wan 2.1), the umT5 word positions
(`words.py`), the attn2 recorder (`attention.py`), flow-matching re-noising and inversion (`flow.py`).

Wan 2.2 A14B has two experts: `transformer` for timesteps ≥ boundary_ratio · num_train_timesteps,
`transformer_2` below. `predict` calls the expert for its timestep; the recorders, the frozen
weights and the gradient checkpointing of `differentiable` cover both.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...rad.attention_maps import AttentionStore
from ..base import Backbone
from . import geometry
from .attention import attn2_layer, record_wan_cross_attention
from .flow import flow_inversion, level_timesteps, renoise, step_sigmas
from .windows import windowed
from .words import WanPromptTokens, tokenize_wan_prompt, word_positions


def default_rad_blocks(num_layers: int) -> list[int]:
    """The blocks whose attn2 RAD reads by default: from the middle of the stack to two thirds of
    it (num_layers // 2 … 2 · num_layers // 3; 1.3B's 30 blocks: 15…20, 14B's 40: 20…26).
    Measured on the trained shapes DiT (6 blocks, data/shapes-wan; 8 edits of seed 0, placement with
    RAD): blocks [3, 4] 0.99, [4] alone 0.99, [3] alone 0.83, [2, 3] 0.93, [0, 1] 0.82; the former
    default, the second quarter ([1, 2] there), 0.88 at step size 500 where [3, 4] read 0.97
    (configs/shapes-wan.yaml). The model's words localise in block 3 (its attention loss's), yet RAD
    steers best through the block after it: a real Wan may localise elsewhere, which only a
    run on its weights can say. The RAD forward stops after the last of these blocks."""
    first = num_layers // 2
    return list(range(first, max(first, (2 * num_layers) // 3) + 1))


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


def _block_of(layer: str) -> int:
    """"blocks.{i}.attn2.processor" → i."""
    parts = layer.split(".")
    if len(parts) != 4 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2:] != ["attn2", "processor"]:
        raise KeyError(f"{layer!r} is not a Wan cross-attention layer (blocks.<i>.attn2.processor)")
    return int(parts[1])


def check_token_cell(cell_px, geom: geometry.WanGeometry, field: str = "model.attention_cell_px") -> None:
    """RAD reads Wan's attention on its tokens: the attention cell must be the model's token."""
    if cell_px != geom.token_px:
        raise ConfigError(field, f"this Wan model attends on its tokens of {geom.token_px} px ({geom.describe()}); "
                                 f"set {geom.token_px}, got {cell_px}")


class WanBackbone(Backbone):
    """transformer (and transformer_2 with boundary_ratio, Wan 2.2): WanTransformer3DModel; vae
    AutoencoderKLWan; text_encoder umT5 with its tokenizer; scheduler FlowMatchEulerDiscreteScheduler.
    A part a use does not need may be None (RAD alone needs only the transformers).
    `max_sequence_length`: the text length the prompt's embeddings are zero-padded to (WanPipeline's 512)."""

    name = "wan"
    first_text_column = 0  # umT5 has no start token: column 0 is the prompt's first piece

    def __init__(self, transformer, transformer_2=None, boundary_ratio: float | None = None, vae=None, text_encoder=None,
                 tokenizer=None, scheduler=None, device=None, max_sequence_length: int = 512, progress: bool = True,
                 video_processor=None):
        if transformer is None and transformer_2 is None:
            raise ValueError("Wan needs `transformer` (the expert for high noise in Wan 2.2)")
        self.transformer, self.transformer_2 = transformer, transformer_2
        self.boundary_ratio = boundary_ratio
        self.vae, self.text_encoder, self.tokenizer, self.scheduler = vae, text_encoder, tokenizer, scheduler
        self.max_sequence_length = max_sequence_length
        self.progress = progress
        model = self.models[0]
        self.device = device if device is not None else model.device
        # the model's own factors (Wan 2.2 TI2V's VAE is 16×, a small Wan-layout model's may be 4×)
        self.geometry = geometry.geometry_of(vae, model)
        self.spatial_factor, self.temporal_factor = self.geometry.spatial, self.geometry.temporal
        self.token_px = self.geometry.token_px
        self.latent_channels = model.config.in_channels
        if video_processor is None:
            from diffusers.video_processor import VideoProcessor

            video_processor = VideoProcessor(vae_scale_factor=self.spatial_factor)
        self.video_processor = video_processor

    @classmethod
    def from_pipeline(cls, pipe, max_sequence_length: int = 512) -> "WanBackbone":
        """The view over a WanPipeline's current components, on its execution device."""
        progress = not getattr(pipe, "_progress_bar_config", {}).get("disable", False)
        return cls(pipe.transformer, pipe.transformer_2, pipe.config.boundary_ratio, pipe.vae, pipe.text_encoder,
                   pipe.tokenizer, pipe.scheduler, pipe._execution_device, max_sequence_length, progress,
                   getattr(pipe, "video_processor", None))

    # ------------------------------------------------------------------ the experts

    @property
    def models(self) -> list[torch.nn.Module]:
        return [m for m in (self.transformer, self.transformer_2) if m is not None]

    @property
    def denoiser(self) -> torch.nn.Module:
        """The transformer; both experts (a ModuleList over them) for Wan 2.2."""
        models = self.models
        return models[0] if len(models) == 1 else torch.nn.ModuleList(models)

    @property
    def dtype(self) -> torch.dtype:
        return self.models[0].dtype

    @property
    def num_layers(self) -> int:
        return len(self.models[0].blocks)

    @property
    def boundary_timestep(self) -> float | None:
        if self.transformer_2 is None or self.boundary_ratio is None:
            return None
        return self.boundary_ratio * self.scheduler.config.num_train_timesteps

    def expert(self, t) -> torch.nn.Module:
        """The transformer for timestep t (WanPipeline's rule: the first at and above the boundary)."""
        boundary = self.boundary_timestep
        if self.transformer is None:
            return self.transformer_2
        if boundary is None or float(t) >= boundary:
            return self.transformer
        return self.transformer_2

    # ------------------------------------------------------------------ geometry

    def check_frames(self, n_frames: int, field: str = "video.n_frames") -> None:
        geometry.check_frame_count(n_frames, field=field, temporal=self.temporal_factor)

    def frame_groups(self, n_frames: int) -> list[list[int]]:
        return geometry.latent_frame_groups(n_frames, self.temporal_factor)

    # ------------------------------------------------------------------ the VAE

    def _latent_statistics(self, device, dtype):
        z = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, dtype)
        # WanPipeline's spelling (1 / std, then divide by it): the same rounding as its decode
        inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1).to(device, dtype)
        return mean, inv_std

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1], F = 4k + 1 → normalised latents (1, C, k + 1, H/s, W/s), s the
        VAE's spatial factor, float32: the posterior's mode (deterministic: `generator` is not drawn from), normalised with the
        VAE's latents_mean / latents_std as WanPipeline un-normalises before decoding."""
        pixels = video.to(self.device, self.vae.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        z = self.vae.encode(pixels).latent_dist.mode().float()
        mean, inv_std = self._latent_statistics(z.device, z.dtype)
        return (z - mean) * inv_std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, reference: torch.Tensor | None = None, *,
                       reference_statistics: bool = True, keep_reference_outside: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents (1, C, f, h, w) → frames (4f − 3, 3, H, W) in [0, 1], as WanPipeline decodes.

        irjs.decode_statistics: source does not apply (the causal VAE normalises with RMS norms
        over channels at each position: there are no frame statistics to borrow), so a reference
        with `reference_statistics` is refused. `keep_reference_outside` (1, 1, f, h, w)
        on the latent frames, or (1, 1, F, h, w) on the pixel frames, 1 = edited: outside it each
        pixel frame is the reference's own decode, a pixel frame taking the cells of the latent frame
        that covers it (irjs.decode_outside: source) or its own (source_frames), each cell its s × s
        pixels."""
        if reference is not None and reference_statistics:
            raise ValueError("irjs.decode_statistics: source does not apply to Wan (its causal VAE normalises with RMS "
                             "norms at each position: no frame statistics to borrow); use edit")
        if keep_reference_outside is not None and reference is None:
            raise ValueError("keep_reference_outside needs the reference latents whose pixels it keeps")
        frames = self._decode(latents)
        if keep_reference_outside is None:
            return frames
        if reference.shape != latents.shape:
            raise ValueError(f"reference {tuple(reference.shape)} and latents {tuple(latents.shape)} must have one shape")
        source = self._decode(reference)
        mask = keep_reference_outside
        if mask.shape[2] == frames.shape[0]:  # the pixel frames' own cells
            cells = mask[0, 0][:, None].float()  # (F, 1, h, w)
        elif mask.shape[2] == latents.shape[2]:
            index = torch.tensor(geometry.latent_frame_index(frames.shape[0], self.temporal_factor), device=mask.device)
            cells = mask[0, 0].index_select(0, index)[:, None].float()
        else:
            raise ValueError(f"keep_reference_outside has {mask.shape[2]} frames: give the {latents.shape[2]} latent "
                             f"frames or the {frames.shape[0]} pixel frames")
        pixels = torch.nn.functional.interpolate(cells, scale_factor=self.spatial_factor, mode="nearest")
        pixels = pixels.to(frames.device, frames.dtype)
        return frames * pixels + source.to(frames) * (1 - pixels)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype)
        mean, inv_std = self._latent_statistics(z.device, z.dtype)
        video = self.vae.decode(z / inv_std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        return self.video_processor.postprocess_video(video, output_type="pt")[0].float()

    # ------------------------------------------------------------------ text

    def tokenize(self, prompt: str | WanPromptTokens) -> WanPromptTokens:
        return tokenize_wan_prompt(self.tokenizer, prompt, self.max_sequence_length)

    def word_token_indices(self, prompt: str | WanPromptTokens, word: str, occurrence: int | None = None,
                           field: str = "word") -> list[int]:
        return word_positions(self.tokenizer, prompt, word, occurrence, field, self.max_sequence_length)

    @torch.no_grad()
    def encode_prompt(self, prompt: str | WanPromptTokens) -> torch.Tensor:
        """(1, max_sequence_length, d): the real tokens' umT5 embeddings, zero-padded, as WanPipeline
        encodes (the cleaned text padded to max_sequence_length with its attention mask, the
        embeddings cut to the real tokens and padded with zeros), in the text encoder's dtype."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        # a str is cleaned here as WanPipeline cleans it; a WanPromptTokens holds the cleaned text
        text = prompt.text if isinstance(prompt, WanPromptTokens) else prompt_clean(prompt)
        inputs = self.tokenizer([text], padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        n_real = int(inputs.attention_mask.gt(0).sum())
        encoder_device = next(self.text_encoder.parameters()).device
        embeds = self.text_encoder(inputs.input_ids.to(encoder_device), inputs.attention_mask.to(encoder_device)).last_hidden_state
        embeds = embeds.to(self.text_encoder.dtype).to(self.device)
        padded = torch.zeros_like(embeds)
        padded[:, :n_real] = embeds[:, :n_real]
        return padded

    def text_token_count(self, tokens: WanPromptTokens, prompt_only: bool) -> int:
        # the real tokens (the prompt's pieces and `</s>`), never the zero padding; prompt_only drops `</s>`
        return tokens.n_real - (1 if prompt_only else 0)

    # ------------------------------------------------------------------ attention RAD reads

    def attention_layers(self, cell_px: int, field: str = "model.attention_cell_px", blocks: Sequence[int] | None = None,
                         blocks_field: str = "rad.blocks") -> list[str]:
        """attn2 of `blocks` (rad.blocks; None: `default_rad_blocks`): every block attends on the one
        token grid (`token_px`, 16 px on Wan 2.1), so the grid cannot choose them."""
        check_token_cell(cell_px, self.geometry, field)
        return [attn2_layer(b) for b in resolve_rad_blocks(blocks, self.num_layers, blocks_field)]

    def attention_cell_sizes(self) -> list[int]:
        return [self.token_px]  # every block attends on the one token grid

    def attention_grid(self, height: int, width: int, cell_px: int | None = None) -> tuple[int, int]:
        cell_px = self.token_px if cell_px is None else cell_px
        return height // cell_px, width // cell_px

    def recording(self, layers: Sequence[str], store: AttentionStore, n_text_tokens: int | None = None):
        """Recorders on attn2 of `layers` in every expert, their maps renormalised over the prompt's
        `n_text_tokens` real tokens (columns 0 … n − 1, all kept) and never over the zero padding."""
        if n_text_tokens is None:
            raise ValueError("Wan's recorder needs n_text_tokens (text_token_count): its 512-column softmax "
                             "includes the zero padding")
        return record_wan_cross_attention(self.models, [_block_of(layer) for layer in layers], store,
                                          list(range(n_text_tokens)), n_text_tokens)

    @contextlib.contextmanager
    def recording_features(self):
        """The last block's output tokens of the expert called, laid back on their (f, h', w')
        patch grid: (B·f, D, h', w')."""
        features: list[torch.Tensor] = []
        hooks = []
        for model in self.models:
            grid: list[tuple[int, int, int]] = []

            def read_grid(module, args, kwargs, grid=grid):
                latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                p_t, p_h, p_w = module.config.patch_size
                _, _, f, h, w = latents.shape
                grid[:] = [(f // p_t, h // p_h, w // p_w)]

            def keep(module, args, output, grid=grid):
                f, h, w = grid[0]
                tokens = output.float()  # (B, f·h·w, D)
                features.append(tokens.unflatten(1, (f, h, w)).permute(0, 1, 4, 2, 3).flatten(0, 1))

            hooks.append(model.register_forward_pre_hook(read_grid, with_kwargs=True))
            hooks.append(model.blocks[-1].register_forward_hook(keep))
        try:
            yield features
        finally:
            for hook in hooks:
                hook.remove()

    # ------------------------------------------------------------------ one step

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        self.scheduler.set_begin_index(0)  # as WanPipeline: the step index without a search
        return self.scheduler.timesteps

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def scale_model_input(self, latents: torch.Tensor, t) -> torch.Tensor:
        return latents  # flow matching takes x_σ as it is

    def predict(self, latents: torch.Tensor, t, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The velocity of the expert for t (in its dtype), the timestep expanded to the batch as
        WanPipeline does."""
        model = self.expert(t)
        timestep = torch.as_tensor(t, device=latents.device).reshape(-1)[:1].expand(latents.shape[0])
        return model(hidden_states=latents.to(model.dtype), timestep=timestep,
                     encoder_hidden_states=prompt_embeds.to(model.dtype), return_dict=False)[0]

    def step(self, model_output: torch.Tensor, t, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(model_output, t, latents, return_dict=False)[0]

    def sigma(self, t) -> float:
        """σ of timestep t: the run's own σ for one of its timesteps (set_timesteps; bit-exact with
        the inversion's levels), otherwise t / num_train_timesteps, the flow-matching relation the
        model was trained on (t = σ · N; the region finder's low noise levels)."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timesteps is not None and len(timesteps):
            hits = (timesteps == torch.as_tensor(t, dtype=timesteps.dtype, device=timesteps.device)).nonzero()
            if len(hits):
                return step_sigmas(self.scheduler)[int(hits[0])]
        n_train = self.scheduler.config.num_train_timesteps
        if not 0 <= float(t) <= n_train:
            raise ValueError(f"timestep {float(t)} is outside the scheduler's 0…{n_train}")
        return float(t) / n_train

    def renoise_source(self, source: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """(1 − σ_t)·x₀ + σ_t·ε (IRJS outside the regions, and the inversion-free start)."""
        return renoise(source, self.sigma(t), noise)

    @torch.no_grad()
    def invert(self, source_latents: torch.Tensor, prompt, num_inference_steps: int, guidance_scale: float = 1.0,
               progress: bool | None = None, fixed_point_iters: int = 0,
               windows: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Flow inversion (flow.flow_inversion) of `source_latents` under the source `prompt` (a
        str, its tokens, or its (1, L, d) embeddings), without guidance: Euler, or with
        `fixed_point_iters` > 0 the exact inverse of the sampler's Euler steps. The trajectory
        (steps + 1, 1, C, f, h, w), entry k at sampling step steps − k's level, float32 at least.
        `windows` (latent frames, windows.latent_windows): each velocity is the windows' blend, as
        the edit's steps are."""
        if guidance_scale != 1.0:
            raise ConfigError("inversion.guidance_scale", "Wan's flow inversion runs without guidance: set 1.0")
        embeds = prompt if torch.is_tensor(prompt) else self.encode_prompt(prompt)
        embeds = embeds.to(self.device, self.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        show = self.progress if progress is None else progress
        with tqdm(total=num_inference_steps, desc="flow inversion", disable=not show) as bar:
            velocity = lambda x, t: self.predict(x, t, embeds)  # noqa: E731
            if windows is not None:
                velocity = windowed(velocity, windows, source_latents.shape[2])
            return flow_inversion(velocity, source_latents, step_sigmas(self.scheduler),
                                  level_timesteps(self.scheduler), fixed_point_iters, progress=bar.update)

    # ------------------------------------------------------------------ RAD's backward pass

    @contextlib.contextmanager
    def differentiable(self, gradient_checkpointing: bool = False):
        """Both experts' weights frozen (RAD needs ∂L/∂x only) and, on request, their per-block
        gradient checkpointing; restored on exit."""
        models = self.models
        flags = [(p, p.requires_grad) for m in models for p in m.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        switched = [m for m in models if gradient_checkpointing and not m.is_gradient_checkpointing]
        for m in switched:
            m.enable_gradient_checkpointing()
        try:
            yield
        finally:
            for m in switched:
                m.disable_gradient_checkpointing()
            for p, flag in flags:
                p.requires_grad_(flag)
