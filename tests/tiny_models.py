"""Tiny random models for CPU tests without a hub (shared by every test file: keep it stable).

- `tiny_unet2d`, `tiny_vae`, `tiny_text_encoder`, `tiny_sd_components`, `save_tiny_sd`: a
  Stable-Diffusion-shaped text-to-image model, small enough to run in milliseconds. The UNet has
  three levels (UNet factors 1, 2, 4) and the VAE factor is 2, so image cells are 2, 4 and 8 px:
  cross-attention at 2 px (down_blocks.0, up_blocks.2), 4 px (down_blocks.1, up_blocks.1: the
  SD-like RAD pattern, 1 + 2 layers) and 8 px (mid_block only).
- `save_tiny_clip`, `save_tiny_owlvit`: metric models saved as local folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, patch_size=16)

# Config of the tiny UNet (a UNet2DConditionModel config, as SD's unet/config.json).
TINY_UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,  # diffusers' legacy name: 8 heads, as SD
    norm_num_groups=8,
)
TINY_VAE_SCALE_FACTOR = 2


def _tokenizer():
    from reatco.tokens import openai_clip_tokenizer

    return openai_clip_tokenizer()


def tiny_unet2d(seed: int = 0):
    """UNet2DConditionModel, SD-shaped: CrossAttnDown ×2 + Down, Up + CrossAttnUp ×2, 8 heads."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG).eval()


def tiny_vae(seed: int = 0):
    """AutoencoderKL with 2 levels (vae_scale_factor 2), 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=32,
    ).eval()


def tiny_text_encoder(seed: int = 0):
    """CLIPTextModel with SD's vocabulary (49408) and 77 positions, hidden size 32, 2 layers."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(**{**TEXT, "num_hidden_layers": 2}, max_position_embeddings=77, projection_dim=32)
    return CLIPTextModel(config).eval()


def tiny_scheduler():
    """DDIMScheduler with Stable Diffusion's settings."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def tiny_sd_components(seed: int = 0) -> dict:
    """vae, text_encoder, tokenizer (the real SD tokenizer), unet (2-D), scheduler (DDIM)."""
    return dict(vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed), tokenizer=_tokenizer(),
                unet=tiny_unet2d(seed), scheduler=tiny_scheduler())


def save_tiny_sd(folder, seed: int = 0) -> Path:
    """A complete Stable-Diffusion-layout folder (model_index.json for StableDiffusionPipeline,
    safety checker and feature extractor null; unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    import diffusers

    folder = Path(folder)
    components = tiny_sd_components(seed)
    for name, component in components.items():
        component.save_pretrained(folder / name)
    library = {"tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder": ["transformers", "CLIPTextModel"]}
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "requires_safety_checker": False, "safety_checker": [None, None], "feature_extractor": [None, None]}
    for name, component in components.items():
        index[name] = library.get(name, ["diffusers", type(component).__name__])
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """CLIPModel + CLIPProcessor (32 px images); also serves as a tiny PickScore model."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(text_config={**TEXT, "max_position_embeddings": 77},
                        vision_config={**VISION, "image_size": 32}, projection_dim=16)
    CLIPModel(config).eval().save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=_tokenizer()).save_pretrained(folder)
    return Path(folder)


def save_tiny_owlvit(folder: Path, seed: int = 0) -> Path:
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    torch.manual_seed(seed)
    config = OwlViTConfig(text_config={**TEXT, "max_position_embeddings": 16},
                          vision_config={**VISION, "image_size": 64}, projection_dim=32)
    OwlViTForObjectDetection(config).eval().save_pretrained(folder)
    images = OwlViTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64})
    tokenizer = _tokenizer()
    tokenizer.model_max_length = 16  # OWL-ViT's text model has 16 positions; its processor pads to this
    OwlViTProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)
