"""Decoding an edit with the source's normalisation statistics.

The VAE decoder's GroupNorm layers normalise each frame by statistics over the whole frame. An
edit inside the regions changes those statistics, and so the brightness and contrast of every
pixel of the frame, the invariant region included, although IRJS left its latents untouched
(measured on the shapes model: a uniform shift of up to 22 grey levels outside the regions).
Decoding the edit with the statistics each layer had for the source frames turns every GroupNorm
into a fixed per-channel affine map: a decoded pixel then depends on the edit only through the
decoder's receptive field.

Memory: the statistics are a mean and a variance per sample and group, a few kB per frame, so the
source and the edit are decoded chunk by chunk (`decode_chunks_with_reference_statistics`): a
chunk of the source is decoded only to record them, its pixels are dropped, and the edit's chunk
is decoded with them. Nothing is kept across chunks but the statistics of the chunk in flight and
the decoded edit. The statistics are gathered a slice of groups at a time in float32, and the
normalised output is written into the GroupNorm's own output, so no float32 copy of a whole
activation is made.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# float32 elements converted at a time when a half-precision activation's statistics are gathered
_STATS_CHUNK_ELEMENTS = 1 << 22


def group_statistics(x: torch.Tensor, num_groups: int, chunk_elements: int = _STATS_CHUNK_ELEMENTS):
    """Per-sample, per-group mean and (biased) variance of x (N, C, ...) in float32, each (N, G, 1).

    A half-precision x is converted to float32 a slice of groups at a time (at most
    `chunk_elements` elements), never as a whole."""
    groups = x.reshape(x.shape[0], num_groups, -1)
    if groups.dtype == torch.float32:
        var, mean = torch.var_mean(groups, dim=-1, unbiased=False, keepdim=True)
        return mean, var
    per_group = groups.shape[-1]
    step = max(1, chunk_elements // max(1, per_group))
    means, variances = [], []
    for sample in groups:
        for start in range(0, num_groups, step):
            var, mean = torch.var_mean(sample[start:start + step].float(), dim=-1, unbiased=False, keepdim=True)
            means.append(mean)
            variances.append(var)
    shape = (x.shape[0], num_groups, 1)
    return torch.cat(means).reshape(shape), torch.cat(variances).reshape(shape)


def normalize_into(out: torch.Tensor, x: torch.Tensor, norm: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """out ← GroupNorm(x) with the given per-sample, per-group statistics (float32, (N, G, 1)),
    computed in out's memory: (x − mean) · scale + bias with a per-(sample, channel) scale."""
    n, c = x.shape[:2]
    per = c // norm.num_groups
    inv_std = torch.rsqrt(var + norm.eps)  # (N, G, 1)
    scale = inv_std.expand(n, norm.num_groups, per).reshape(n, c)
    shift = mean.expand(n, norm.num_groups, per).reshape(n, c)
    if norm.affine:
        scale = scale * norm.weight.float()
    bias = norm.bias.float() if norm.affine else None
    spatial = (1,) * (x.dim() - 2)
    out.copy_(x)
    out.sub_(shift.reshape(n, c, *spatial).to(out.dtype))
    out.mul_(scale.reshape(n, c, *spatial).to(out.dtype))
    if bias is not None:
        out.add_(bias.reshape(1, c, *spatial).to(out.dtype))
    return out


class ReferenceStatistics:
    """Forward hooks on every GroupNorm of `decoder`: `record(fn, *args)` runs fn and keeps each
    GroupNorm call's statistics (its output is discarded); `apply(fn, *args)` runs fn with every
    GroupNorm call normalising by the recorded statistics of the same call, then forgets them.

        with ReferenceStatistics(vae.decoder) as stats:
            for ref, z in zip(reference_chunks, latent_chunks):
                stats.record(decode, ref)
                out.append(stats.apply(decode, z))
    """

    def __init__(self, decoder: torch.nn.Module):
        self.norms = [m for m in decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mode = "off"
        self.next = 0
        self.handles: list = []

    def __enter__(self) -> "ReferenceStatistics":
        self.handles = [m.register_forward_hook(self._hook) for m in self.norms]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.recorded, self.mode = [], "off"

    def _hook(self, module: torch.nn.GroupNorm, args, output):
        x = args[0]
        if self.mode == "record":
            self.recorded.append(group_statistics(x, module.num_groups))
            return output
        if self.mode != "apply":
            return output
        if self.next >= len(self.recorded):
            raise RuntimeError("the edit's decode ran more GroupNorm calls than the reference's")
        mean, var = self.recorded[self.next]
        self.next += 1
        if mean.shape[0] != x.shape[0]:
            raise RuntimeError("the reference and the edit were decoded in differently sized slices")
        return normalize_into(output, x, module, mean, var)

    @torch.no_grad()
    def record(self, fn: Callable, *args):
        """fn(*args), keeping every GroupNorm call's statistics; returns fn's output."""
        self.recorded, self.mode = [], "record"
        try:
            return fn(*args)
        finally:
            self.mode = "off"

    @torch.no_grad()  # the normalised values are written into the GroupNorm's output in place
    def apply(self, fn: Callable, *args):
        self.mode, self.next = "apply", 0
        try:
            out = fn(*args)
        finally:
            self.mode = "off"
        if self.next != len(self.recorded):
            raise RuntimeError("the edit's decode ran fewer GroupNorm calls than the reference's")
        self.recorded = []
        return out


def keep_reference_pixels(decoded: torch.Tensor, reference_decoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """decoded where `mask` is 1, the reference's decode where it is 0 (soft values mix).

    decoded, reference_decoded: (N, 3, H, W); mask: (N, 1, h, w) on the latent grid (1 = edited
    cell), each cell standing for the (H / h) × (W / w) pixels it decodes to."""
    h, w = decoded.shape[-2:]
    if h % mask.shape[-2] or w % mask.shape[-1]:
        raise ValueError(f"a {tuple(mask.shape[-2:])} latent mask does not tile {h}×{w} pixels")
    pixels = mask.to(decoded.dtype).repeat_interleave(h // mask.shape[-2], -2).repeat_interleave(w // mask.shape[-1], -1)
    return reference_decoded + (decoded - reference_decoded) * pixels


def decode_chunks_with_reference_statistics(decode: Callable[[torch.Tensor], torch.Tensor], decoder: torch.nn.Module,
                                            references: Sequence[torch.Tensor], latents: Sequence[torch.Tensor],
                                            keep_reference_outside: Sequence[torch.Tensor] | None = None,
                                            statistics: bool = True) -> list[torch.Tensor]:
    """[decode(z) for z in latents], chunk k's GroupNorms normalising by the statistics they had in
    decode(references[k]) (`statistics`; False: each decode keeps its own); one chunk in memory at
    a time (see the module docstring).

    keep_reference_outside: per chunk, a latent-grid mask (N, 1, h, w), 1 = edited: where it is 0,
    the pixels are decode(references[k]) (`keep_reference_pixels`)."""
    if len(references) != len(latents):
        raise ValueError(f"{len(references)} reference chunks for {len(latents)} latent chunks")
    if keep_reference_outside is not None and len(keep_reference_outside) != len(latents):
        raise ValueError(f"{len(keep_reference_outside)} mask chunks for {len(latents)} latent chunks")
    outputs = []
    with ReferenceStatistics(decoder) as stats:
        for k, (ref, z) in enumerate(zip(references, latents)):
            if ref.shape != z.shape:
                raise ValueError(f"reference {tuple(ref.shape)} and latents {tuple(z.shape)} must have one shape")
            if statistics:
                ref_out = stats.record(decode, ref)
                out = stats.apply(decode, z)
            else:
                ref_out, out = (decode(ref) if keep_reference_outside is not None else None), decode(z)
            if keep_reference_outside is not None:
                out = keep_reference_pixels(out, ref_out, keep_reference_outside[k].to(out.device))
            outputs.append(out)
    return outputs


def decode_with_reference_statistics(decode: Callable[[torch.Tensor], torch.Tensor], decoder: torch.nn.Module,
                                     reference: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """decode(latents), with every GroupNorm of `decoder` normalising by the per-sample, per-group
    mean and variance it computed in decode(reference). `reference` and `latents` must decode in
    the same sequence of calls (same shape, same slicing), sample i taking sample i's statistics."""
    return decode_chunks_with_reference_statistics(decode, decoder, [reference], [latents])[0]
