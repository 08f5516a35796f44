"""Recording Wan's text cross-attention (`blocks.{i}.attn2`) for RAD.

Wan's processor dispatches to SDPA / flash kernels and never forms the probabilities, so the
recorder computes them itself: q and k as the block computes them (projection, `norm_q`/`norm_k`,
head split; no RoPE in cross-attention), softmax(q·kᵀ/√d) over the prompt's *real* tokens only.
WanPipeline zero-pads the text embeddings to 512 tokens and the model's softmax runs over the
padding too; the softmax over the real tokens is exactly the model's probabilities renormalised
over them (p_j / Σ_real p), so the padding's share never reaches RAD. Of those columns only the
objects' tokens are kept (the full 32,760 × 512 map is ~0.4 GB a layer in bf16 on 1.3B).

The layer's output is always the original processor's (the recorder only adds the maps), so
recording leaves the frames unchanged. Maps go to a `reatco.rad.attention_maps.AttentionStore`
reshaped as the UNet recorder leaves them: (batch·latent frames, heads, h·w, kept columns).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from ...rad.attention_maps import AttentionStore


class WanCrossAttentionRecorder:
    """attn2 processor: the original processor's output, plus the maps while `store.explicit`.

    `columns`: the token positions kept (the objects' words); `n_norm`: the maps are the
    probabilities renormalised over positions 0 … n_norm − 1 (the prompt's real tokens); the
    store's `grid` is the token grid (h, w) of one latent frame."""

    def __init__(self, store: AttentionStore, original, columns: Sequence[int], n_norm: int):
        self.store = store
        self.original = original
        self.columns = list(columns)
        self.n_norm = int(n_norm)
        if not self.columns or max(self.columns) >= self.n_norm:
            raise ValueError(f"kept columns {self.columns} must lie among the {self.n_norm} normalised tokens")

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if self.store.explicit:  # record, observe, and replay (checkpointed recomputation: the same graph)
            maps = self.maps(attn, hidden_states, encoder_hidden_states)
            if self.store.mode in ("record", "observe"):
                self.store.add(maps)  # after the output is formed: an early stop leaves nothing half-done
        return out

    def maps(self, attn, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens and (B, L, D) text → (B·F, heads, h·w, len(columns)) probabilities
        renormalised over the real tokens, in float32 at least."""
        if getattr(attn, "add_k_proj", None) is not None:
            raise NotImplementedError("image-conditioned Wan (I2V, added K/V projections) is not supported by RAD")
        text = context[:, : self.n_norm]
        query = attn.to_q(hidden_states)
        if getattr(attn, "fused_projections", False):
            key = attn.to_kv(text).chunk(2, dim=-1)[0]
        else:
            key = attn.to_k(text)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1)).transpose(1, 2)  # (B, heads, N, d)
        key = key.unflatten(2, (attn.heads, -1)).transpose(1, 2)  # (B, heads, n_norm, d)
        work = torch.promote_types(query.dtype, torch.float32)
        scores = torch.matmul(query.to(work), key.to(work).transpose(-1, -2)) * query.shape[-1] ** -0.5
        probs = scores.softmax(dim=-1)[..., self.columns]  # (B, heads, N, K)
        h, w = self.store.grid  # the token grid of one latent frame
        b, heads, n, k = probs.shape
        if n % (h * w):
            raise RuntimeError(f"attn2 saw {n} tokens, not a whole number of {h}×{w} latent frames")
        n_frames = n // (h * w)
        # Wan flattens tokens as (frame, row, column): frames go to the batch, as the UNet's do
        return probs.reshape(b, heads, n_frames, h * w, k).transpose(1, 2).reshape(b * n_frames, heads, h * w, k)


def attn2_layer(block: int) -> str:
    """The `attn_processors` key of block `block`'s cross-attention."""
    return f"blocks.{block}.attn2.processor"


@contextlib.contextmanager
def record_wan_cross_attention(transformers: Sequence, blocks: Sequence[int], store: AttentionStore,
                               columns: Sequence[int], n_norm: int) -> Iterator[AttentionStore]:
    """Recorders on `attn2` of `blocks` in every transformer (both experts of Wan 2.2); each keeps
    its own original processor; all restored on exit. A forward goes through one expert, so the
    store's layer count (the early stop) is the number of blocks."""
    originals = []
    try:
        for model in transformers:
            processors = dict(model.attn_processors)
            originals.append((model, processors))
            missing = [b for b in blocks if attn2_layer(b) not in processors]
            if missing:
                raise KeyError(f"blocks {missing} have no attn2 in this transformer ({len(model.blocks)} blocks)")
            model.set_attn_processor({
                name: WanCrossAttentionRecorder(store, proc, columns, n_norm) if name in {attn2_layer(b) for b in blocks} else proc
                for name, proc in processors.items()
            })
        store.n_layers = len(blocks)
        yield store
    finally:
        for model, processors in originals:
            model.set_attn_processor(processors)
