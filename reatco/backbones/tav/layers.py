"""Which cross-attention layers RAD records: those at the attention grid's resolution."""

from __future__ import annotations

from ...errors import ConfigError


def cross_attention_scales(unet) -> dict[str, int]:
    """UNet downsampling factor (latent pixels per attention cell) of every `attn2` processor,
    named as in `unet.attn_processors`. Derived from the block structure: a down block's layers run
    before its downsampler, an up block's before its upsampler."""
    names = [n for n in unet.attn_processors if n.endswith(".attn2.processor")]
    scales: dict[str, int] = {}

    def assign(prefix: str, factor: int) -> None:
        for name in names:
            if name.startswith(prefix + "."):
                scales[name] = factor

    factor = 1
    for i, block in enumerate(unet.down_blocks):
        assign(f"down_blocks.{i}", factor)
        if getattr(block, "downsamplers", None):
            factor *= 2
    if unet.mid_block is not None:
        assign("mid_block", factor)
    for i, block in enumerate(unet.up_blocks):
        assign(f"up_blocks.{i}", factor)
        if getattr(block, "upsamplers", None):
            factor //= 2
    return scales


def rad_attention_layers(unet, vae_scale_factor: int, cell_px: int, field: str = "model.attention_cell_px") -> list[str]:
    """Names (keys of `unet.attn_processors`) of the cross-attention processors whose grid cell is
    `cell_px` image pixels. SD v1.x (VAE factor 8, 32 px): the 2 layers of `down_blocks.2` and the
    3 of `up_blocks.1`."""
    scales = cross_attention_scales(unet)
    layers = [name for name, s in scales.items() if s * vae_scale_factor == cell_px]
    if not layers:
        available = sorted({s * vae_scale_factor for s in scales.values()})
        raise ConfigError(field, f"this model has no cross-attention layer at {cell_px} px per cell; "
                                                     f"its cross-attention layers have cells of {available} px")
    return layers
