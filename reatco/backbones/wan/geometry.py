"""Wan's geometry: 4k + 1 pixel frames, latent frames that cover 4 pixel frames each, tokens of
(VAE factor × patch) px — 16 × 16 px on Wan 2.1.

Wan's causal VAE compresses 4× in time: latent frame 0 is pixel frame 0 alone, latent frame i ≥ 1
covers pixel frames 4i − 3 … 4i. A clip therefore has 4k + 1 frames. Regions are given in pixel
frames, as for every backbone; on a latent frame a region is the union of the regions of the pixel
frames it covers (an object anywhere in those frames is anywhere in that latent frame's tokens).

The factors are the model's own (`WanGeometry`, read from `vae/config.json` and
`transformer/config.json`, or from the loaded modules): Wan 2.2 TI2V-5B's VAE compresses 16× in
space, a small Wan-layout model may compress 4×. The constants below are Wan 2.1's, the documented
values used only where a model's configs cannot be read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

import torch

from ...errors import ConfigError

TEMPORAL_FACTOR = 4  # Wan 2.1's AutoencoderKLWan: scale_factor_temporal
SPATIAL_FACTOR = 8  # Wan 2.1's AutoencoderKLWan: scale_factor_spatial
PATCH = 2  # Wan 2.1's WanTransformer3DModel: patch_size (1, 2, 2)
TOKEN_PX = SPATIAL_FACTOR * PATCH  # one token of Wan 2.1 is 16 × 16 px of one latent frame


@dataclass(frozen=True)
class WanGeometry:
    """A Wan model's compression: the VAE's `spatial` and `temporal` factors and the transformer's
    spatial `patch`; one token is `token_px` × `token_px` pixels of one latent frame."""

    spatial: int = SPATIAL_FACTOR
    temporal: int = TEMPORAL_FACTOR
    patch: int = PATCH

    @property
    def token_px(self) -> int:
        return self.spatial * self.patch

    def describe(self) -> str:
        return f"VAE {self.spatial} × patch {self.patch}"


WAN21 = WanGeometry()  # Wan 2.1 (and 2.2 A14B): 8× in space, 4× in time, patch 2 → 16-px tokens


def _positive_int(value, what: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, f"the model's {what} must be a positive integer, got {value!r}")
    return value


def geometry_from_configs(vae_config: Mapping, transformer_config: Mapping, field: str = "model.pretrained") -> WanGeometry:
    """The geometry of an AutoencoderKLWan config and a WanTransformer3DModel config (dicts, or the
    modules' `.config`). `scale_factor_spatial` / `scale_factor_temporal` are what WanPipeline
    reads; where a config leaves them null they follow from the VAE's stages (2 per `dim_mult`
    step in space, times its own `patch_size`; 2 per `temperal_downsample` in time). A token must be
    one latent frame (temporal patch 1) and square (equal height and width patch)."""
    spatial = vae_config.get("scale_factor_spatial")
    if spatial is None:
        spatial = 2 ** (len(vae_config.get("dim_mult", [1, 2, 4, 4])) - 1) * (vae_config.get("patch_size") or 1)
    temporal = vae_config.get("scale_factor_temporal")
    if temporal is None:
        temporal = 2 ** sum(bool(d) for d in vae_config.get("temperal_downsample", [False, True, True]))
    patch = transformer_config.get("patch_size", (1, 2, 2))
    if not isinstance(patch, (list, tuple)) or len(patch) != 3:
        raise ConfigError(field, f"the transformer's patch_size must be (t, h, w), got {patch!r}")
    if patch[0] != 1 or patch[1] != patch[2]:
        raise ConfigError(field, f"the transformer's patch_size {tuple(patch)} is not supported: RAD's grid needs a token "
                                 "of one latent frame (t = 1) and square (h = w)")
    return WanGeometry(_positive_int(spatial, "VAE scale_factor_spatial", field),
                       _positive_int(temporal, "VAE scale_factor_temporal", field),
                       _positive_int(patch[1], "transformer patch_size", field))


def geometry_of(vae, transformer) -> WanGeometry:
    """The geometry of loaded modules; Wan 2.1's VAE factors where `vae` is None (RAD alone)."""
    vae_config = vae.config if vae is not None else {"scale_factor_spatial": WAN21.spatial,
                                                     "scale_factor_temporal": WAN21.temporal}
    return geometry_from_configs(vae_config, transformer.config)


def read_geometry(folder, field: str = "model.pretrained") -> WanGeometry:
    """The geometry of a Wan folder in the diffusers layout from its `vae/config.json` and
    `transformer/config.json` alone (no weights), so that sizes and cells are checked before any load."""
    configs = []
    for part in ("vae", "transformer"):
        path = os.path.join(os.fspath(folder), part, "config.json")
        try:
            with open(path) as f:
                configs.append(json.load(f))
        except (OSError, ValueError) as err:
            raise ConfigError(field, f"cannot read {part}/config.json of {folder} ({err}); give a Wan folder in the "
                                     "diffusers layout") from err
        if not isinstance(configs[-1], dict):
            raise ConfigError(field, f"{part}/config.json of {folder} must hold a JSON object")
    return geometry_from_configs(*configs, field=field)


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


def latent_frame_index(n_frames: int, temporal: int = TEMPORAL_FACTOR) -> list[int]:
    """For each pixel frame, the latent frame that covers it: [0, 1, 1, 1, 1, 2, …] (to spread
    what Wan gives per latent frame, maps or cells, back over the pixel frames)."""
    return [g for g, covered in enumerate(latent_frame_groups(n_frames, temporal)) for _ in covered]


def latent_frame_union(masks: torch.Tensor, temporal: int = TEMPORAL_FACTOR) -> torch.Tensor:
    """Masks on pixel frames (..., F, h, w) → on latent frames (..., F_latent, h, w): each latent
    frame's mask is the union (max) of the masks of the pixel frames it covers."""
    groups = latent_frame_groups(masks.shape[-3], temporal)
    return torch.stack([masks[..., g, :, :].amax(dim=-3) for g in groups], dim=-3)


def check_size(height: int, width: int, geometry: WanGeometry = WAN21, field: str = "video") -> None:
    """Wan patchifies tokens of `geometry.token_px` px (Wan 2.1: 16, VAE 8 × patch 2): height and
    width must be multiples of it."""
    multiple = geometry.token_px
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
            raise ConfigError(f"{field}.{name}", f"must be a multiple of {multiple} px for this Wan model "
                                                 f"({geometry.describe()}), got {value!r}")
