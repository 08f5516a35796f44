"""TuneAVideoUNet: Stable Diffusion's UNet2DConditionModel run on videos the Tune-A-Video way.

Frames are folded into the batch and the 2-D network runs unchanged except for three video-aware
parts, all sharing the model's FrameContext: sparse-causal `attn1` (a processor), temporal
attention in every transformer block, and GroupNorms over all frames in the ResNets and
`conv_norm_out`. Checkpoints are read and written in the original Tune-A-Video format.
"""

from __future__ import annotations

import inspect
import json
import logging
import os

import torch
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401 (ModelMixin: see __init__)
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from . import checkpoint as ckpt
from .attention import SparseCausalAttnProcessor, TemporalTransformerBlock, temporal_block_like
from .frames import FrameContext, fold_frames, unfold_frames
from .norm import FrameGroupNorm

logger = logging.getLogger(__name__)


class TuneAVideoUNet(UNet2DConditionModel):
    """Takes the config of a UNet2DConditionModel; see the module docstring."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frame_context = FrameContext()
        self._add_video_layers()
        self.set_default_attn_processor()

    # diffusers reads the config keys from __init__'s signature: keep the 2-D model's.
    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)

    def _add_video_layers(self) -> None:
        ctx = self.frame_context
        for module in list(self.modules()):
            if isinstance(module, Transformer2DModel):
                blocks = [temporal_block_like(block, module, ctx) for block in module.transformer_blocks]
                module.transformer_blocks = torch.nn.ModuleList(blocks)
            elif isinstance(module, ResnetBlock2D):
                module.norm1 = FrameGroupNorm.like(module.norm1, ctx)
                module.norm2 = FrameGroupNorm.like(module.norm2, ctx)
        if self.conv_norm_out is not None:
            self.conv_norm_out = FrameGroupNorm.like(self.conv_norm_out, ctx)

    def temporal_blocks(self) -> list[TemporalTransformerBlock]:
        return [m for m in self.modules() if isinstance(m, TemporalTransformerBlock)]

    def reset_temporal_parameters(self, seed: int = 0) -> None:
        """Temporal modules as on inflation: default init, zero output projection (weight and bias).

        The init is drawn from `seed`, not from the caller's random state (which it leaves as it
        was): inflating an image UNet, however it is loaded, gives the same model every time, so
        tuning runs repeat exactly."""
        cuda = sorted({p.device.index or 0 for p in self.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for block in self.temporal_blocks():
                block.reset_temporal_parameters()

    # ------------------------------------------------------------------------- processors

    def default_attn_processors(self) -> dict:
        """Sparse-causal on every `attn1`, SDPA elsewhere (cross- and temporal attention)."""
        causal, sdpa = SparseCausalAttnProcessor(self.frame_context), AttnProcessor2_0()
        return {name: causal if name.endswith(".attn1.processor") else sdpa for name in self.attn_processors}

    def set_default_attn_processor(self) -> None:
        """Unlike the 2-D model's, keeps attn1 sparse-causal (the video model's default)."""
        self.set_attn_processor(self.default_attn_processors())

    # ------------------------------------------------------------------------- forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        cross_attention_kwargs: dict | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> UNet2DConditionOutput | tuple:
        """sample (B, C, F, H, W); timestep scalar or (B,); encoder_hidden_states (B, L, D), shared
        by the frames of a video; encoder_attention_mask (B, L). Other keyword arguments go to
        UNet2DConditionModel.forward as they are (per-frame batch, B·F rows)."""
        if sample.ndim != 5:
            raise ValueError(f"TuneAVideoUNet takes (batch, channels, frames, height, width) samples, got shape {tuple(sample.shape)}")
        b, f = sample.shape[0], sample.shape[2]
        if encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states has {encoder_hidden_states.shape[0]} rows for a batch of {b} videos")
        self.frame_context.n_frames = f
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim > 0 and timestep.numel() > 1:
            if timestep.shape != (b,):
                raise ValueError(f"timestep must be a scalar or shaped ({b},), got {tuple(timestep.shape)}")
            timestep = timestep.repeat_interleave(f)
        if encoder_attention_mask is not None:
            encoder_attention_mask = encoder_attention_mask.repeat_interleave(f, dim=0)
        out = super().forward(
            fold_frames(sample),
            timestep,
            encoder_hidden_states.repeat_interleave(f, dim=0),
            cross_attention_kwargs=cross_attention_kwargs,
            encoder_attention_mask=encoder_attention_mask,
            return_dict=False,
            **kwargs,
        )[0]
        out = unfold_frames(out, f)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    # ------------------------------------------------------------------------- construction

    @classmethod
    def _empty(cls, config: dict, device="cpu") -> "TuneAVideoUNet":
        """Built on the meta device (instant even for SD), then given uninitialised storage:
        every parameter must be loaded or reset by the caller."""
        with torch.device("meta"):
            model = cls.from_config(config)
        return model.to_empty(device=device)

    def _load(self, state_dict: dict, with_temporal: bool, source: str) -> None:
        own = self.state_dict().keys()
        expected = set(own) if with_temporal else {k for k in own if not ckpt.is_temporal_key(k)}
        ckpt.check_keys(expected, set(state_dict), source)
        self.load_state_dict(state_dict, strict=False)
        if not with_temporal:
            self.reset_temporal_parameters()

    @classmethod
    def from_unet2d(cls, unet2d: UNet2DConditionModel) -> "TuneAVideoUNet":
        """Inflate an image UNet (weights copied; temporal modules contribute nothing yet)."""
        config = {k: v for k, v in unet2d.config.items() if not k.startswith("_")}
        param = next(unet2d.parameters())
        model = cls._empty(config, device=param.device)
        model._load(unet2d.state_dict(), with_temporal=False, source=f"the {type(unet2d).__name__}")
        if param.dtype != torch.float32:
            model = model.to(param.dtype)
        return model.train(unet2d.training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, torch_dtype: torch.dtype | None = None, **kwargs) -> "TuneAVideoUNet":
        """A Stable Diffusion UNet (2-D: inflated) or a Tune-A-Video UNet (`*3D` config: loaded
        with strict key matching), from a local folder or a hub id.

        Hub options (revision, cache_dir, token, local_files_only, …), `variant` and
        `use_safetensors` are honoured; the other keyword arguments diffusers' pipeline loader
        passes (device_map, low_cpu_mem_usage, …) are accepted and ignored."""
        location = os.fspath(pretrained_model_name_or_path)
        torch_dtype = torch_dtype or kwargs.get("dtype")
        hub = ckpt.split_hub_kwargs(kwargs)
        config_file = ckpt.resolve_file(location, "config.json", subfolder, hub)
        if config_file is None:
            where = os.path.join(location, subfolder or "")
            hint = " (an SD folder? pass subfolder='unet')" if subfolder is None and ckpt.resolve_file(location, "config.json", "unet", hub) else ""
            raise ckpt.CheckpointError(f"no config.json in {where}{hint}")
        with open(config_file) as f:
            config, is_tav = ckpt.to_2d_config(json.load(f))
        state_dict, weights_file = ckpt.load_weights(location, subfolder, hub, kwargs.get("variant"), kwargs.get("use_safetensors"))
        model = cls._empty(config)
        model._load(state_dict, with_temporal=is_tav, source=weights_file)
        model.register_to_config(_name_or_path=location)
        if torch_dtype is not None and torch_dtype != torch.float32:
            model = model.to(torch_dtype)
        return model.eval()

    def save_pretrained(self, save_directory, safe_serialization: bool = False, **kwargs) -> None:
        """Tune-A-Video format: config.json with `*3D` block names and `_class_name:
        UNet3DConditionModel`; fp32 weights in `diffusion_pytorch_model.bin` (what the original
        code reads) or `.safetensors`. Other keyword arguments (diffusers' pipeline saver passes
        some) are ignored. A README.md beside them says how to load the folder: diffusers' own
        `UNet3DConditionModel` is another architecture and refuses it."""
        folder = os.fspath(save_directory)
        ckpt.write_checkpoint(folder, ckpt.to_tav_config(dict(self.config)), self.state_dict(), safe_serialization)
        with open(os.path.join(folder, "README.md"), "w") as f:
            f.write(LOADING_NOTE)


LOADING_NOTE = """# A Tune-A-Video UNet (reatco)

Load it with reatco, which reads and writes the original Tune-A-Video format:

```python
from reatco.backbones.tav import TuneAVideoUNet
unet = TuneAVideoUNet.from_pretrained("this/folder")
pipe = ReAtCoPipeline.from_pretrained("model/folder", unet="this/folder")   # or unet=unet
```

`config.json` says `_class_name: UNet3DConditionModel` because the original Tune-A-Video code
reads that name; diffusers' own `UNet3DConditionModel` is a different architecture (ModelScope's
text-to-video UNet) and refuses these weights.
"""
