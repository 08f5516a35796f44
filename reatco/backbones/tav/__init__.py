"""The Tune-A-Video UNet on current diffusers (see docs/ARCHITECTURE.md, backbones/tav/)."""

# diffusers' pipeline loader finds a component's loading method through base classes exposed
# by the component's library module (model_index.json: ["reatco.backbones.tav.unet", "TuneAVideoUNet"]).
from diffusers import ModelMixin  # noqa: F401

from .attention import SparseCausalAttnProcessor, TemporalTransformerBlock, sparse_causal_context
from .checkpoint import CheckpointError
from .frames import FrameContext, fold_frames, unfold_frames
from .layers import cross_attention_scales, rad_attention_layers
from .norm import FrameGroupNorm
from .unet import TuneAVideoUNet

__all__ = [
    "CheckpointError",
    "FrameContext",
    "FrameGroupNorm",
    "SparseCausalAttnProcessor",
    "TemporalTransformerBlock",
    "TuneAVideoUNet",
    "cross_attention_scales",
    "fold_frames",
    "rad_attention_layers",
    "sparse_causal_context",
    "unfold_frames",
]
