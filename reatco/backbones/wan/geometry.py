"""Wan's geometry: 4k + 1 pixel frames, latent frames that cover 4 pixel frames each, tokens of 16 × 16 px.

Wan's causal VAE compresses 4× in time: latent frame 0 is pixel frame 0 alone, latent frame i ≥ 1
covers pixel frames 4i − 3 … 4i. A clip therefore has 4k + 1 frames. Regions are given in pixel
frames, as for every backbone; on a latent frame a region is the union of the regions of the pixel
frames it covers (an object anywhere in those frames is anywhere in that latent frame's tokens).
"""

from __future__ import annotations

import torch

from ...errors import ConfigError

TEMPORAL_FACTOR = 4  # AutoencoderKLWan: scale_factor_temporal
SPATIAL_FACTOR = 8  # AutoencoderKLWan: scale_factor_spatial
PATCH = 2  # WanTransformer3DModel: patch_size (1, 2, 2)
TOKEN_PX = SPATIAL_FACTOR * PATCH  # one token is 16 × 16 px of one latent frame


def frames_after_padding(n_frames: int, temporal: int = TEMPORAL_FACTOR) -> int:
    """The smallest 4k + 1 ≥ n_frames."""
    return -(-(n_frames - 1) // temporal) * temporal + 1


def check_frame_count(n_frames: int, pad: bool = False, field: str = "video.n_frames",
                      temporal: int = TEMPORAL_FACTOR) -> int:
    """The clip length Wan runs: `n_frames` when it is 4k + 1; otherwise, with `pad` (the
    `video.pad_frames` option, off by default), the next 4k + 1 (the clip's last frame repeated);
    otherwise a ConfigError naming `field`."""
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ConfigError(field, f"must be a positive number of frames, got {n_frames!r}")
    if n_frames % temporal == 1:
        return n_frames
    padded = frames_after_padding(n_frames, temporal)
    if pad:
        return padded
    below = padded - temporal
    options = f"{below} or {padded}" if below >= 1 else f"{padded}"
    raise ConfigError(field, f"Wan's VAE needs {temporal}k + 1 frames (1, 5, 9, …, 17, …, 81); got {n_frames}: use "
                             f"{options}, or set video.pad_frames: true to repeat the last frame up to {padded} "
                             "(the padded frames are dropped from the outputs)")


def pad_clip(video: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(F, 3, H, W) → (n_frames, 3, H, W), the last frame repeated."""
    missing = n_frames - video.shape[0]
    if missing < 0:
        raise ValueError(f"cannot pad {video.shape[0]} frames down to {n_frames}")
    if missing == 0:
        return video
    return torch.cat([video, video[-1:].expand(missing, *video.shape[1:])])


def latent_frame_count(n_frames: int, temporal: int = TEMPORAL_FACTOR) -> int:
    return (n_frames - 1) // temporal + 1


def latent_frame_groups(n_frames: int, temporal: int = TEMPORAL_FACTOR) -> list[list[int]]:
    """For each latent frame, the pixel frames it covers: [[0], [1, 2, 3, 4], [5, …, 8], …]."""
    check_frame_count(n_frames, temporal=temporal)
    return [[0]] + [list(range(temporal * i - temporal + 1, temporal * i + 1)) for i in range(1, latent_frame_count(n_frames, temporal))]


def latent_frame_union(masks: torch.Tensor, temporal: int = TEMPORAL_FACTOR) -> torch.Tensor:
    """Masks on pixel frames (..., F, h, w) → on latent frames (..., F_latent, h, w): each latent
    frame's mask is the union (max) of the masks of the pixel frames it covers."""
    groups = latent_frame_groups(masks.shape[-3], temporal)
    return torch.stack([masks[..., g, :, :].amax(dim=-3) for g in groups], dim=-3)


def check_size(height: int, width: int, multiple: int = TOKEN_PX, field: str = "video") -> None:
    """Wan patchifies 16 × 16 px (VAE 8 × patch 2): height and width must be multiples of it."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
            raise ConfigError(f"{field}.{name}", f"must be a multiple of {multiple} px for Wan (VAE 8 × patch 2), "
                                                 f"got {value!r}")
