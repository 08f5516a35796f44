"""Decoding an edit with the source's normalisation statistics.

The VAE decoder's GroupNorm layers normalise each frame by statistics over the whole frame. An
edit inside the regions changes those statistics, and so the brightness and contrast of every
pixel of the frame, the invariant region included, although IRJS left its latents untouched
(measured on the shapes model: a uniform shift of up to 22 grey levels outside the regions).
Decoding the edit with the statistics each layer had for the source frames turns every GroupNorm
into a fixed per-channel affine map: a decoded pixel then depends on the edit only through the
decoder's receptive field.
"""

from __future__ import annotations

from typing import Callable

import torch


def decode_with_reference_statistics(decode: Callable[[torch.Tensor], torch.Tensor], decoder: torch.nn.Module,
                                     reference: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """decode(latents), with every GroupNorm of `decoder` normalising by the per-sample, per-group
    mean and variance it computed in decode(reference). `reference` and `latents` must decode in
    the same sequence of calls (same shape, same slicing), sample i taking sample i's statistics."""
    if reference.shape != latents.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and latents {tuple(latents.shape)} must have one shape")
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
    state = {"mode": "record", "next": 0}

    def hook(module: torch.nn.GroupNorm, args, output):
        x = args[0]
        groups = x.float().reshape(x.shape[0], module.num_groups, -1)
        if state["mode"] == "record":
            recorded.append((groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)))
            return output
        if state["next"] >= len(recorded):
            raise RuntimeError("the edit's decode ran more GroupNorm calls than the reference's")
        mean, var = recorded[state["next"]]
        state["next"] += 1
        if mean.shape[0] != x.shape[0]:
            raise RuntimeError("the reference and the edit were decoded in differently sized slices")
        y = ((groups - mean) / torch.sqrt(var + module.eps)).reshape(x.shape)
        if module.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * module.weight.float().reshape(shape) + module.bias.float().reshape(shape)
        return y.to(output.dtype)

    handles = [m.register_forward_hook(hook) for m in norms]
    try:
        with torch.no_grad():
            decode(reference)
        state["mode"] = "apply"
        out = decode(latents)
    finally:
        for h in handles:
            h.remove()
    if state["next"] != len(recorded):
        raise RuntimeError("the edit's decode ran fewer GroupNorm calls than the reference's")
    return out
