"""Tune-A-Video attention on diffusers: sparse-causal self-attention and temporal attention.

Sparse-causal attention is an attention *processor* for `attn1` (installed with
`set_attn_processor`); temporal attention is structural (`attn_temp` + `norm_temp` in every
transformer block, run after the feed-forward residual), so it works with any processor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from .frames import FrameContext


def sparse_causal_context(x: torch.Tensor, context: FrameContext) -> torch.Tensor:
    """(B·F, N, C) per-frame tokens → (B·F, 2N, C): for frame i, [frame 0 ; frame i−1].

    Frame 0 gets [frame 0 ; frame 0], which attends exactly like frame 0 alone."""
    b, f = context.split(x.shape[0])
    video = x.reshape(b, f, *x.shape[1:])
    previous = torch.arange(f, device=x.device) - 1
    previous[0] = 0
    first = video[:, :1].expand_as(video)
    return torch.cat([first, video[:, previous]], dim=2).reshape(b * f, -1, x.shape[-1])


def attention_input(attn: Attention, hidden_states, temb=None):
    """The prologue every diffusers attention processor shares: spatial norm, (B, C, H, W) →
    tokens, group norm. Returns (tokens, residual, spatial shape or None)."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    spatial = None
    if hidden_states.ndim == 4:
        spatial = hidden_states.shape
        b, c, h, w = spatial
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, spatial


def attention_heads(attn: Attention, query, key, value):
    """(B, N, heads·d) projections → (B, heads, N, d) each, with the module's q/k norms applied
    (diffusers' AttnProcessor2_0 step between projecting and attending)."""
    batch, head_dim = query.shape[0], key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def attention_output(attn: Attention, out, residual, spatial):
    """The matching epilogue: output projection, back to (B, C, H, W), residual, rescale."""
    out = attn.to_out[1](attn.to_out[0](out))
    if spatial is not None:
        out = out.transpose(-1, -2).reshape(spatial)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class SparseCausalAttnProcessor:
    """Self-attention whose keys/values are the tokens of the first and the previous frame.

    Same math as diffusers' AttnProcessor2_0 otherwise (SDPA); the number of heads and the scale
    are read from the Attention module."""

    def __init__(self, frame_context: FrameContext):
        self.frame_context = frame_context

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("sparse-causal attention is mask-free self-attention; install it on attn1 only")
        hidden_states, residual, spatial = attention_input(attn, hidden_states, temb)
        batch = hidden_states.shape[0]

        query = attn.to_q(hidden_states)
        # Projections are per token, so projecting every frame once and then gathering
        # [first ; previous] equals projecting the gathered tokens.
        key = sparse_causal_context(attn.to_k(hidden_states), self.frame_context)
        value = sparse_causal_context(attn.to_v(hidden_states), self.frame_context)
        query, key, value = attention_heads(attn, query, key, value)

        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = out.transpose(1, 2).flatten(2).to(query.dtype)  # (B, N, heads·d)
        return attention_output(attn, out, residual, spatial)


class TemporalTransformerBlock(BasicTransformerBlock):
    """BasicTransformerBlock + Tune-A-Video's temporal attention after the feed-forward residual:
    full self-attention over the frames at each spatial position, no positional encoding.

    `attn_temp.to_out.0` starts at zero (weight and bias), so a new block is the image block."""

    def __init__(self, *args, frame_context: FrameContext, **kwargs):
        super().__init__(*args, **kwargs)
        self.frame_context = frame_context
        self.norm_temp = nn.LayerNorm(self.dim)
        self.attn_temp = Attention(
            query_dim=self.dim,
            heads=self.num_attention_heads,
            dim_head=self.attention_head_dim,
            dropout=self.dropout,
            bias=self.attention_bias,  # False in SD: bias-free q/k/v, as in Tune-A-Video
            upcast_attention=self.attn1.upcast_attention,
            processor=AttnProcessor2_0(),
        )
        self.reset_temporal_parameters()

    @torch.no_grad()
    def reset_temporal_parameters(self) -> None:
        """Fresh temporal modules that contribute nothing: default init, zero output projection."""
        self.norm_temp.reset_parameters()
        for proj in (self.attn_temp.to_q, self.attn_temp.to_k, self.attn_temp.to_v):
            proj.reset_parameters()
        self.attn_temp.to_out[0].weight.zero_()
        self.attn_temp.to_out[0].bias.zero_()

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        hidden_states = super().forward(hidden_states, *args, **kwargs)
        b, f = self.frame_context.split(hidden_states.shape[0])
        n, c = hidden_states.shape[1:]
        # (B·F, N, C) → (B·N, F, C): each spatial position attends over the frames of its video.
        # LayerNorm is per token, so it is applied before the rearrangement.
        temporal = self.norm_temp(hidden_states).reshape(b, f, n, c).transpose(1, 2).reshape(b * n, f, c)
        temporal = self.attn_temp(temporal)
        return hidden_states + temporal.reshape(b, n, f, c).transpose(1, 2).reshape(b * f, n, c)


def temporal_block_like(block: BasicTransformerBlock, transformer, frame_context: FrameContext) -> TemporalTransformerBlock:
    """A TemporalTransformerBlock with the architecture `transformer` (a Transformer2DModel with
    continuous input, as in SD) gives `block`. Parameters are random; the caller loads weights."""
    cfg = transformer.config
    if block.norm_type != "layer_norm" or not transformer.is_input_continuous:
        raise NotImplementedError(f"only SD-style transformer blocks can be inflated (norm_type={block.norm_type!r})")
    same = {name: getattr(cfg, name) for name in _BLOCK_SETTINGS}  # the transformer's own, passed on as they are
    return TemporalTransformerBlock(transformer.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim,
                                    norm_type=block.norm_type, frame_context=frame_context, **same)


# Transformer2DModel config fields that BasicTransformerBlock takes under the same names.
_BLOCK_SETTINGS = ("dropout", "cross_attention_dim", "activation_fn", "num_embeds_ada_norm", "attention_bias",
                   "only_cross_attention", "double_self_attention", "upcast_attention", "norm_elementwise_affine",
                   "norm_eps", "attention_type")
