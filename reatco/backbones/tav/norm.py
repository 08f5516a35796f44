"""GroupNorm whose statistics span all frames of a video (Tune-A-Video's ResNet norms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .frames import FrameContext


class FrameGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state-dict keys) over a frame-folded batch (B·F, C, H, W):
    mean and variance of each group are taken over frames × H × W of each video, as the original
    applies GroupNorm to (B, C, F, H, W). Folding frames into the batch without this changes outputs."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *, frame_context: FrameContext):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.frame_context = frame_context  # plain object: not a submodule, not in the state dict

    @classmethod
    def like(cls, norm: nn.GroupNorm, frame_context: FrameContext) -> "FrameGroupNorm":
        """A frame-aware norm with `norm`'s shape and eps (parameters are loaded later)."""
        return cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, frame_context=frame_context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f = self.frame_context.split(x.shape[0])
        if f == 1:
            return super().forward(x)
        c = x.shape[1]
        # (B·F, C, *S) → (B, C, F, *S): group statistics then cover every frame of a video.
        video = x.reshape(b, f, c, *x.shape[2:]).transpose(1, 2)
        out = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", over frames"
