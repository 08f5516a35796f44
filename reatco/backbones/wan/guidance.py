"""RAD on Wan: the UNet path's `RADGuidance` (losses, top-K, refinement, step schedule, frame
calibration, loss log) driving a Wan transformer — or Wan 2.2's two experts — on the token grid.

What differs from the UNet is only what the network is: `WanDenoiser` is the one model call (the
expert for the timestep, the timestep expanded to the batch as WanPipeline does), and the maps
arrive from `WanCrossAttentionRecorder` already as each object token's share of the prompt's real
tokens, so a word's map is the sum (or mean) of its columns with no further normalisation.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Sequence

import torch

from ...rad import losses as rad_ops
from ...config import RADConfig
from ...rad.guidance import RADGuidance, _frozen_parameters, _gradient_checkpointing
from .attention import record_wan_cross_attention


class WanDenoiser:
    """Wan's model call: `transformer` for timesteps ≥ `boundary_timestep` (all of them when there is
    no second expert), `transformer_2` below it (Wan 2.2 A14B). `denoiser(x, t, encoder_hidden_states)`
    returns the velocity in the model's dtype. Parameters and gradient checkpointing span both."""

    def __init__(self, transformer, transformer_2=None, boundary_timestep: float | None = None):
        if transformer is None:
            raise ValueError("Wan needs `transformer` (the expert for high noise in Wan 2.2)")
        self.transformer, self.transformer_2 = transformer, transformer_2
        self.boundary_timestep = boundary_timestep if transformer_2 is not None else None

    @property
    def models(self) -> list:
        return [m for m in (self.transformer, self.transformer_2) if m is not None]

    def expert(self, t) -> torch.nn.Module:
        if self.boundary_timestep is None or float(t) >= self.boundary_timestep:
            return self.transformer
        return self.transformer_2

    def expert_index(self, t) -> int:
        return 1 if self.expert(t) is self.transformer else 2

    def __call__(self, x: torch.Tensor, t, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        model = self.expert(t)
        timestep = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0])
        return model(hidden_states=x.to(model.dtype), timestep=timestep,
                     encoder_hidden_states=encoder_hidden_states.to(model.dtype), return_dict=False)[0]

    # what RADGuidance's frozen-weights and checkpointing contexts use
    def parameters(self):
        return itertools.chain.from_iterable(m.parameters() for m in self.models)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return all(m.is_gradient_checkpointing for m in self.models)

    def enable_gradient_checkpointing(self) -> None:
        for m in self.models:
            m.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        for m in self.models:
            m.disable_gradient_checkpointing()


class WanRADGuidance(RADGuidance):
    """RAD for one edit on Wan. `blocks`: the transformer blocks whose attn2 RAD reads (in each
    expert); `positions`: each word's umT5 token positions; `n_norm`: the real tokens the maps are
    normalised over; `masks` (J, latent frames, gh, gw) on the 16-px token grid."""

    def __init__(self, denoiser: WanDenoiser, blocks: Sequence[int], cond: torch.Tensor, words: Sequence[str],
                 positions: Sequence[Sequence[int]], n_norm: int, masks: torch.Tensor, settings: RADConfig,
                 num_steps: int):
        self.columns = [p for word in positions for p in word]  # the recorder keeps these, in this order
        kept, start = [], 0
        for word in positions:  # word j's columns among the kept ones
            kept.append(list(range(start, start + len(word))))
            start += len(word)
        super().__init__(denoiser, [], cond, words, kept, masks, settings, n_norm, num_steps)
        self.blocks = list(blocks)
        self.n_norm = n_norm

    @contextlib.contextmanager
    def attached(self, differentiate: bool = True):
        with contextlib.ExitStack() as stack:
            stack.enter_context(record_wan_cross_attention(self.unet.models, self.blocks, self.store, self.columns, self.n_norm))
            if differentiate:
                stack.enter_context(_frozen_parameters(self.unet))
                if self.settings.gradient_checkpointing:
                    stack.enter_context(_gradient_checkpointing(self.unet))
            try:
                yield self
            finally:
                self.store.reset()

    def word_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Recorded maps (F, h, w, kept columns) → (J, F, h, w). The recorder's columns already are
        each token's share of the real tokens' attention (rad.token_normalization and temperature do
        not apply); a word of several pieces combines them by rad.word_tokens."""
        rad = self.settings
        word_maps = torch.stack([_columns(maps, idx, rad.word_tokens) for idx in self.token_indices])
        if rad.smoothing:
            word_maps = torch.stack(
                [rad_ops.gaussian_smooth_3d(m, kernel=rad.smoothing_kernel, sigma=rad.smoothing_sigma) for m in word_maps])
        return word_maps

    def presence(self, maps: torch.Tensor, frames=None) -> torch.Tensor:
        """(J, F): each word's mean share in its region (the padding's share is not recorded)."""
        masks = (self.masks if frames is None else self.masks[:, frames]).to(maps.device).float().flatten(2)
        share = torch.stack([maps.float()[..., idx].sum(-1) for idx in self.token_indices]).flatten(2)
        return (share * masks).sum(-1) / masks.sum(-1).clamp(min=1)


def _columns(maps: torch.Tensor, columns: Sequence[int], reduction: str) -> torch.Tensor:
    picked = maps[..., list(columns)]
    if reduction == "mean":
        return picked.mean(dim=-1)
    if reduction == "sum":
        return picked.sum(dim=-1)
    raise ValueError(f"rad.word_tokens must be sum or mean, got {reduction!r}")
