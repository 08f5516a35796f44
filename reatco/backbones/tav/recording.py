"""Recording the cross-attention maps that RAD reads on the Tune-A-Video UNet, and nothing else.

Only the `attn2` layers whose resolution is the RAD grid get a `CrossAttentionRecorder`; every
other layer keeps its own processor (SDPA). A recorder computes attention with SDPA too, except
while its store is *explicit* (the RAD pass), when it forms softmax(QKᵀ) so the probabilities can
be kept with their autograd graph.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ...rad.attention_maps import AttentionStore
from .attention import attention_heads, attention_input, attention_output


class CrossAttentionRecorder:
    """Cross-attention processor for one RAD layer (same math as diffusers' AttnProcessor2_0)."""

    def __init__(self, store: AttentionStore):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        hidden_states, residual, spatial = attention_input(attn, hidden_states, temb)
        batch = hidden_states.shape[0]

        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attention_heads(attn, query, attn.to_k(context), attn.to_v(context))
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        if self.store.explicit:
            # float32: in fp16 the RAD loss's gradient w.r.t. small probabilities overflows
            # (inf − inf = NaN in the softmax backward); the maps RAD reads are float32 anyway.
            work = torch.promote_types(query.dtype, torch.float32)  # float64 stays float64
            scores = torch.matmul(query.to(work), key.to(work).transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask.to(work)
            probs = scores.softmax(dim=-1)
            out = torch.matmul(probs.to(value.dtype), value)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)

        out = out.transpose(1, 2).flatten(2).to(query.dtype)  # (B, N, heads·d)
        out = attention_output(attn, out, residual, spatial)
        if self.store.mode in ("record", "observe"):
            # Recorded after the output is formed, so an early stop leaves nothing half-done.
            self.store.add(probs)
        return out


@contextlib.contextmanager
def record_cross_attention(unet, layer_names: Sequence[str], store: AttentionStore) -> Iterator[AttentionStore]:
    """Install recorders on `layer_names` (keys of `unet.attn_processors`); restore on exit."""
    original = dict(unet.attn_processors)
    unknown = [name for name in layer_names if name not in original]
    if unknown:
        raise KeyError(f"not attention layers of this UNet: {unknown}")
    recorder = CrossAttentionRecorder(store)
    store.n_layers = len(layer_names)
    unet.set_attn_processor({name: (recorder if name in layer_names else proc) for name, proc in original.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


class AttentionProbe:
    """attn2 processor that also keeps the attention probabilities (mean over heads) in `store`,
    with their graph when run under grad: the shapes model's attention loss (training) and the
    shapes benchmark's attention gate read them. Plain (implicit-scale) attention, no mask."""

    def __init__(self, store: list):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b, n, _ = hidden_states.shape
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)  # (b·heads, n, L)
        self.store.append(probs.view(b, attn.heads, n, -1).mean(1))
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))
