"""The released Wan text-to-video checkpoints in the diffusers layout, as far as ReAtCo needs them
without their files: the architecture facts of their published `transformer/config.json`,
`vae/config.json` and `model_index.json` (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan2.1-T2V-14B-Diffusers,
Wan2.2-T2V-A14B-Diffusers; the same facts as the Wan team's own configs: dim 1536 / 5120, 30 / 40
layers, VAE stride (4, 8, 8), patch (1, 2, 2), A14B's boundary 0.875).

Two uses, one source:
  * `scripts/edit.py --dry-run` on a hub id whose files are neither a local folder nor in the
    Hugging Face cache, with the hub out of reach: the frame count, the size in tokens, the
    regions on the token grid and `rad.blocks` are checked against these facts instead of the
    model's configs (a real run still needs the files and says so before any weights load);
  * the cost estimates of `reatco/bench/wan.py` (the architectures built with random weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

# What the released transformers share (their config.json, beside the per-size fields below)
TRANSFORMER_COMMON = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                          cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
# Wan 2.1's AutoencoderKLWan (Wan 2.2 A14B ships the same VAE): 8× in space (three halvings of dim_mult), 4× in time
WAN21_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])


@dataclass(frozen=True)
class KnownWanModel:
    """One released checkpoint: its hub id, its size's name, the transformer's own config fields
    (over TRANSFORMER_COMMON), its VAE's and, for Wan 2.2's two experts, the boundary ratio."""

    hub_id: str
    size: str
    transformer: Mapping = field(default_factory=dict)
    vae: Mapping = field(default_factory=lambda: dict(WAN21_VAE))
    boundary_ratio: float | None = None  # Wan 2.2: `transformer_2` denoises below it

    @property
    def transformer_config(self) -> dict:
        """WanTransformer3DModel's keyword arguments (the released config.json's architecture)."""
        return {**TRANSFORMER_COMMON, **self.transformer}

    @property
    def num_layers(self) -> int:
        return int(self.transformer["num_layers"])

    @property
    def two_experts(self) -> bool:
        return self.boundary_ratio is not None

    def geometry(self):
        """The VAE factors and the patch, derived as from the files (geometry_from_configs)."""
        from .geometry import geometry_from_configs

        return geometry_from_configs(self.vae, self.transformer_config)

    def describe(self) -> str:
        g = self.geometry()
        experts = f", two experts (boundary {self.boundary_ratio})" if self.two_experts else ""
        return (f"VAE {g.spatial}× in space and {g.temporal}× in time, patch {g.patch} ({g.token_px}-px tokens), "
                f"{self.num_layers} blocks{experts}")


_SIZE_1_3B = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
_SIZE_14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)

KNOWN_WAN_MODELS = (
    KnownWanModel("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "1.3B", _SIZE_1_3B),
    KnownWanModel("Wan-AI/Wan2.1-T2V-14B-Diffusers", "14B", _SIZE_14B),
    KnownWanModel("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "A14B", _SIZE_14B, boundary_ratio=0.875),
)


def known_wan_model(pretrained) -> KnownWanModel | None:
    """The released checkpoint a `model.pretrained` hub id names (the hub matches ids without
    regard to case); None for a local folder or any other id."""
    text = os.fspath(pretrained)
    if os.path.isdir(text):
        return None
    return next((m for m in KNOWN_WAN_MODELS if m.hub_id.lower() == text.lower()), None)


__all__ = ["KNOWN_WAN_MODELS", "KnownWanModel", "TRANSFORMER_COMMON", "WAN21_VAE", "known_wan_model"]
