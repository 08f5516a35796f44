"""Stable Diffusion v1.4's architecture with random weights, for measuring cost without the hub.

Cost (time, memory) does not depend on the weights' values, so the models are built empty and
filled with small seeded uniform values (far faster than diffusers' init on a CPU).
"""

from __future__ import annotations

import torch

# CompVis/stable-diffusion-v1-4 unet/config.json, written out.
UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
# vae/config.json
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
    norm_num_groups=32, sample_size=512,
)
# text_encoder/config.json (CLIP ViT-L/14's text tower)
TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
# SD v1.x's noise schedule (scheduler/scheduler_config.json)
SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                        set_alpha_to_one=False, num_train_timesteps=1000, steps_offset=1)

# A tiny model with SD's block pattern (RAD layers in down_blocks.2 and up_blocks.1 at 32 px per
# cell with a VAE factor of 8), for smoke runs.
TINY_UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
)
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, sample_size=64,
)
TINY_TEXT_ENCODER_CONFIG = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=77, projection_dim=32)


def fill_random_(module: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> torch.nn.Module:
    """Every parameter and floating buffer ← values uniform in (−scale, scale), from `seed`: a
    seeded block of 2^20 values, copied over each tensor (in block-sized pieces) from seeded offsets (a memory copy, so
    that the SD UNet fills in a second)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    block = torch.rand(1 << 20, generator=g).mul_(2 * scale).sub_(scale)
    size = block.numel()
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            flat = tensor.view(-1)
            for lo in range(0, flat.numel(), size):
                n = min(size, flat.numel() - lo)
                start = int(torch.randint(0, size - n + 1, (1,), generator=g))
                flat[lo:lo + n].copy_(block[start:start + n])
    return module


def _materialize(model: torch.nn.Module, device, dtype, seed: int) -> torch.nn.Module:
    """Meta-device model → random weights on `device` in `dtype` (cast on meta: no copy)."""
    model = model if dtype == torch.float32 else model.to(dtype)
    return fill_random_(model.to_empty(device=device), seed).eval()


def random_unet(device="cpu", dtype=torch.float32, tiny: bool = False, seed: int = 0):
    """A TuneAVideoUNet (inflated SD-1.4 UNet, temporal layers included) with random weights."""
    from ..backbones.tav import TuneAVideoUNet

    with torch.device("meta"):
        unet = TuneAVideoUNet.from_config(dict(TINY_UNET_CONFIG if tiny else UNET_CONFIG))
    return _materialize(unet, device, dtype, seed)


def random_vae(device="cpu", dtype=torch.float32, tiny: bool = False, seed: int = 0):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else VAE_CONFIG))
    return _materialize(vae, device, dtype, seed)


def n_parameters(which: str, tiny: bool = False) -> int:
    """Parameter count of the unet, vae or text_encoder, counted on the meta device (no memory)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..backbones.tav import TuneAVideoUNet

    with torch.device("meta"):
        if which == "unet":
            model = TuneAVideoUNet.from_config(dict(TINY_UNET_CONFIG if tiny else UNET_CONFIG))
        elif which == "vae":
            model = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else VAE_CONFIG))
        elif which == "text_encoder":
            model = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_ENCODER_CONFIG if tiny else TEXT_ENCODER_CONFIG)))
        else:
            raise ValueError(f"unknown model {which!r}")
    return sum(p.numel() for p in model.parameters())
