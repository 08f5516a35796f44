"""The frame count of the forward in progress, shared by a model's video-aware layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FrameContext:
    """Set by `TuneAVideoUNet.forward` before any layer runs; read by the sparse-causal processor,
    the temporal attention and the frame-aware GroupNorms. One object per model (no global state),
    so the same model can be called with a different frame count on every forward."""

    n_frames: int = 1

    def split(self, batch_frames: int) -> tuple[int, int]:
        """(batch, frames) of a frame-folded batch of `batch_frames` rows."""
        f = self.n_frames
        if f < 1 or batch_frames % f:
            raise ValueError(f"a frame-folded batch of {batch_frames} rows does not hold whole videos of {f} frames")
        return batch_frames // f, f


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) → (B·F, C, H, W), frames of a video adjacent."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold_frames(x: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B·F, C, H, W) → (B, C, F, H, W)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // n_frames, n_frames, c, h, w).permute(0, 2, 1, 3, 4)
