"""Recording the cross-attention maps that RAD reads, and nothing else.

Only the `attn2` layers whose resolution is the RAD grid get a `CrossAttentionRecorder`; every
other layer keeps its own processor (SDPA). A recorder computes attention with SDPA too, except
while its store is *explicit* (the RAD pass), when it forms softmax(QKᵀ) so the probabilities can
be kept with their autograd graph. The CFG pass never records.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..backbones.tav.attention import attention_heads, attention_input, attention_output


class RADForwardComplete(Exception):
    """Raised by the last recorder of a RAD pass: the rest of the UNet is not needed."""


class AttentionStore:
    """Maps recorded during one RAD pass (averaged over heads, then over layers on read)."""

    def __init__(self, grid: tuple[int, int] | None = None, n_layers: int = 0, stop_early: bool = True,
                 columns: Sequence[int] | None = None):
        self.grid = grid  # (h, w) of the attention grid; set by the caller for each pass
        self.n_layers = n_layers  # recorded layers per forward; the last one may stop the forward
        self.stop_early = stop_early
        # token columns kept (a model with hundreds of padding tokens keeps the ones RAD reads); None: all
        self.columns = None if columns is None else list(columns)
        # off: plain SDPA · record: explicit, keep maps with their graph (RAD pass) · replay:
        # explicit, keep nothing (checkpoint recomputation) · observe: explicit, keep the detached
        # maps of the last `observe_rows` batch rows (the conditional half of a CFG pass, for
        # attention pictures when RAD is off)
        self.mode = "off"
        self.observe_rows = 0
        self._maps: list[torch.Tensor] = []

    def reset(self) -> None:
        self._maps = []

    @contextlib.contextmanager
    def recording(self, mode: str = "record", observe_rows: int = 0):
        """The recorded layers compute in `mode` ("record", "replay" or "observe" with the last
        `observe_rows` batch rows) inside; maps recorded before are dropped on entry, and the store
        is off (plain SDPA) again on exit. The one place the mode is set."""
        if mode not in ("record", "replay", "observe"):
            raise ValueError(f"unknown attention store mode {mode!r}")
        self.reset()
        self.mode, self.observe_rows = mode, observe_rows
        try:
            yield self
        finally:
            self.mode, self.observe_rows = "off", 0

    @property
    def explicit(self) -> bool:
        return self.mode != "off"

    def add(self, probs: torch.Tensor) -> None:
        """probs: (batch, heads, h*w, tokens) → kept as the head mean (of `columns` when set)."""
        if self.columns is not None:
            probs = probs[..., self.columns]
        if self.mode == "observe":
            self._maps.append(probs[-self.observe_rows :].mean(dim=1).detach())
            return
        self._maps.append(probs.mean(dim=1))
        if self.stop_early and self.n_layers and len(self._maps) == self.n_layers:
            raise RADForwardComplete

    @property
    def n_recorded(self) -> int:
        return len(self._maps)

    def maps(self) -> torch.Tensor:
        """Mean over recorded layers, shaped (batch·frames, h, w, tokens)."""
        if not self._maps:
            raise RuntimeError("no cross-attention was recorded: is the recorder installed on the RAD layers?")
        mean = torch.stack(self._maps).mean(dim=0)
        h, w = self.grid
        if mean.shape[1] != h * w:
            raise RuntimeError(f"recorded maps have {mean.shape[1]} positions, expected a {h}×{w} grid")
        return mean.reshape(mean.shape[0], h, w, mean.shape[-1])


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
