"""Temporal windows over Wan's latent frames, for clips longer than one transformer pass holds.

The user-facing setting is the Tune-A-Video path's `window.size` / `window.stride`, in pixel frames
of the clip (what fits is a number of frames). Wan's transformer sees latent frames, so a window is
the latent frames a `size`-frame clip has ((size − 1) // 4 + 1: 17 frames → 5 latent frames) and
windows slide by whole latent frames (the stride rounded up to them: a latent frame holds 4 pixel
frames). Each window is denoised on its own (its own RAD and IRJS on its frames); where windows
overlap their results are blended with tent weights (largest at a window's centre, where it sees
the most context on both sides), normalised so that every latent frame's weights sum to 1.

The VAE encodes and decodes the whole clip: Wan's causal VAE already works a few frames at a time
with a cache of the frames before (its memory does not grow with the clip), and latent frame i is
only correct decoded after the frames before it, so cutting the clip there would change the frames.
The flow inversion runs on the same windows (each step's velocity blended as the edit blends).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ...windows import temporal_windows
from .geometry import TEMPORAL_FACTOR, latent_frame_count


def latent_windows(run_frames: int, size: int | None, stride: int = 1, temporal: int = TEMPORAL_FACTOR) -> list[list[int]]:
    """The windows of latent frames for a clip of `run_frames` (4k + 1) pixel frames and the config's
    `window.size` / `window.stride` in pixel frames: windows of the latent frames a `size`-frame clip
    has, sliding by the stride rounded up to whole latent frames (null size: one window)."""
    n_latent = latent_frame_count(run_frames, temporal)
    if size is None:
        return [list(range(n_latent))]
    return temporal_windows(n_latent, latent_frame_count(size, temporal), -(-stride // temporal))


def blend_weights(windows: Sequence[Sequence[int]], n_frames: int) -> torch.Tensor:
    """(windows, n_frames) float64: window k's weight on each latent frame (0 outside it), a tent
    over its frames (min(j + 1, L − j) at position j of L), normalised over the windows that hold a
    frame so that each frame's weights sum to 1 (a frame in one window alone: exactly 1)."""
    weights = torch.zeros(len(windows), n_frames, dtype=torch.float64)
    for k, frames in enumerate(windows):
        length = len(frames)
        for j, f in enumerate(frames):
            weights[k, f] = min(j + 1, length - j)
    total = weights.sum(0)
    if (total == 0).any():
        raise ValueError(f"latent frames {torch.nonzero(total == 0).flatten().tolist()} are in no window")
    return weights / total


def blend(values: Sequence[torch.Tensor], windows: Sequence[Sequence[int]], weights: torch.Tensor) -> torch.Tensor:
    """Per-window tensors (B, C, L_k, h, w) → the clip (B, C, F, h, w): Σ_k weight_k · value_k on each
    frame, in the values' dtype."""
    if len(values) != len(windows) or not values:
        raise ValueError(f"{len(values)} values for {len(windows)} windows")
    first = values[0]
    out = torch.zeros(*first.shape[:2], weights.shape[1], *first.shape[3:], dtype=first.dtype, device=first.device)
    for value, frames, w in zip(values, windows, weights):
        if value.shape[2] != len(frames):
            raise ValueError(f"a value of {value.shape[2]} latent frames for a window of {len(frames)}")
        out[:, :, list(frames)] += value * w[list(frames)].to(value)[None, None, :, None, None]
    return out


def windowed(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], windows: Sequence[Sequence[int]],
             n_frames: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`velocity(x, t)` run on each window of x's latent frames and blended (the flow inversion's)."""
    if len(windows) == 1 and list(windows[0]) == list(range(n_frames)):
        return velocity
    weights = blend_weights(windows, n_frames)
    return lambda x, t: blend([velocity(x[:, :, list(frames)], t) for frames in windows], windows, weights)
