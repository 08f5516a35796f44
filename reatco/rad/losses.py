"""Re-Attentional Diffusion (RAD): the losses that pull each word's cross-attention into its region.

Pure tensor functions, no model: the pipeline records the maps, calls these, and takes the
gradient step. Defaults are the official ones (ReAtCo `pipeline_split_gen.py`, itself built on
Attend-and-Excite). Shapes: J objects, F frames, h×w attention grid, L text tokens.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..schema import choices
from .settings import TokenNormalization, TopKRounding, WordTokens


# ----------------------------------------------------------------------------- attention per word


def text_attention(maps: torch.Tensor, n_text_tokens: int | None = None, temperature: float = 100.0,
                   normalization: str = "softmax") -> torch.Tensor:
    """(..., L) cross-attention probabilities → (..., n) re-normalised over the text tokens.

    Drops SOT (index 0, which soaks up most of the attention) and keeps tokens 1…n; column c of
    the result is tokenizer index c + 1. `n_text_tokens`: the prompt's own tokens (len(ids) − 2:
    no EOT, no padding), or None for the official span 1…L−2 (every token but SOT and the last
    one, padding included, as ReAtCo and Attend-and-Excite do for SD v1.x with
    `normalize_eot=False`). `normalization`:
      * "softmax" (official): softmax(A · temperature) over the kept tokens. Sharp when the kept
        tokens hold a sizeable part of the attention, as in SD;
      * "share": A / Σ A over the kept tokens — each token's share of the text tokens' attention,
        `temperature` unused. For models whose attention sits almost entirely in EOT/padding
        (the shapes model gives the prompt's tokens 12–24 % of it, single tokens ≤ 1 %), where
        softmax(A · 100) of such small values is nearly uniform and RAD sees flat maps."""
    n_all = maps.shape[-1]
    n = n_all - 2 if n_text_tokens is None else int(n_text_tokens)
    if not 1 <= n <= n_all - 1:
        raise ValueError(f"n_text_tokens must be in 1…{n_all - 1} for maps over {n_all} tokens, got {n_text_tokens}")
    kept = maps[..., 1 : 1 + n]
    if normalization == "softmax":
        return torch.softmax(kept * temperature, dim=-1)
    if normalization == "share":
        return kept / kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)
    raise ValueError(f"normalization must be one of {choices(TokenNormalization)}, got {normalization!r}")


def word_attention(text_attn: torch.Tensor, token_indices: Sequence[int], reduction: str = "sum") -> torch.Tensor:
    """(..., n) text attention → (...) map of one word, given its tokenizer indices (SOT = 0).

    A word of several tokens (sub-tokens, or a phrase such as "green circle") combines their maps:
      * "mean": high only where all of its tokens attend. The tokens compete for one cell's
        attention (both normalizations sum to 1 over the tokens), so the mean of k tokens never
        exceeds 1/k and thresholds above it (the official 0.5 and 0.8) can never be met;
      * "sum": the word's share of the cell's text attention, on the same [0, 1] scale as a
        single token's map, so the official thresholds keep their meaning for any k.
    Both equal the token's own map for a one-token word."""
    n = text_attn.shape[-1]
    indices = list(token_indices)
    if not indices:
        raise ValueError("a word needs at least one token index")
    bad = [i for i in indices if not 1 <= int(i) <= n]
    if bad:
        raise ValueError(f"token indices {bad} are outside 1…{n} (SOT = 0 is never a word; the map holds tokens 1…{n})")
    columns = torch.tensor([int(i) - 1 for i in indices], device=text_attn.device)
    picked = text_attn.index_select(-1, columns)
    if reduction == "mean":
        return picked.mean(dim=-1)
    if reduction == "sum":
        return picked.sum(dim=-1)
    raise ValueError(f"reduction must be one of {choices(WordTokens)}, got {reduction!r}")


# ----------------------------------------------------------------------------- smoothing


def gaussian_kernel_1d(kernel: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Attend-and-Excite's 1-D Gaussian, normalised to sum 1.

    Note: A&E (utils/gaussian_smoothing.py), and ReAtCo with it, use exp(−((d − μ)/(2σ))²), i.e. a
    standard Gaussian of std σ·√2; we keep their formula so that σ = 0.5 means what it meant there
    (weights 0.212 / 0.576 / 0.212 for kernel 3)."""
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd integer ≥ 1, got {kernel!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    d = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    g = torch.exp(-((d / (2 * sigma)) ** 2))
    return g / g.sum()


def gaussian_kernel_3d(kernel: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """(k, k, k) separable kernel over frames×h×w, sum 1."""
    g = gaussian_kernel_1d(kernel, sigma)
    return g[:, None, None] * g[None, :, None] * g[None, None, :]


def gaussian_smooth_3d(x: torch.Tensor, kernel: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Smooth (..., F, h, w) maps with a k×k×k Gaussian over frames×h×w, keeping the shape.

    Borders are reflect-padded by k//2 like the official code (`F.pad(..., mode='reflect')`,
    mirror without repeating the edge: [a b c] → b [a b c] b). A dimension too short to reflect
    (e.g. a single frame, where the official code fails) is padded by repeating its edge instead;
    for one frame that makes the result the 2-D smoothing of that frame."""
    if x.dim() < 3:
        raise ValueError(f"expected (..., F, h, w) maps, got shape {tuple(x.shape)}")
    lead, (n_f, h, w) = x.shape[:-3], x.shape[-3:]
    weight = gaussian_kernel_3d(kernel, sigma).to(device=x.device, dtype=x.dtype)[None, None]
    pad = kernel // 2
    v = x.reshape(-1, 1, n_f, h, w)
    if pad:
        for dim, size in ((2, n_f), (3, h), (4, w)):
            spec = [0, 0, 0, 0, 0, 0]
            spec[2 * (4 - dim)] = spec[2 * (4 - dim) + 1] = pad  # F.pad lists the last dim first
            v = F.pad(v, tuple(spec), mode="reflect" if size > pad else "replicate")
    return F.conv3d(v, weight).reshape(*lead, n_f, h, w)


# ----------------------------------------------------------------------------- losses


def top_k_count(area: torch.Tensor, ratio: float, rounding: str = "truncate") -> torch.Tensor:
    """K of the top-K mean for a region of `area` cells.

    "truncate" (official): K = int(ratio · area), the official `(mask.sum() * P).long()` computed
    the same way (in the area's dtype), except that K is at least 1 where the official count is
    0 (areas under 5 cells at P = 0.2), whose mean of nothing is a NaN there. "round":
    K = max(1, round(ratio · area)), halves up."""
    if rounding == "truncate":
        k = (area * ratio).long()
    elif rounding == "round":
        k = torch.floor(area * ratio + 0.5).long()
    else:
        raise ValueError(f"rounding must be one of {choices(TopKRounding)}, got {rounding!r}")
    return torch.clamp(k, min=1)


def _top_k_mean(values: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean of the k largest of values[..., :] with a different k per leading index."""
    ordered = values.sort(dim=-1, descending=True).values
    k = k.clamp(max=values.shape[-1])
    picked = ordered.cumsum(dim=-1).gather(-1, (k - 1).unsqueeze(-1)).squeeze(-1)
    return picked / k.to(values.dtype)


def region_losses(word_maps: torch.Tensor, masks: torch.Tensor, top_k_ratio: float = 0.2,
                  top_k_rounding: str = "truncate") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-word inner and outer RAD terms from (J, F, h, w) maps and (J, F, h, w) masks in {0, 1}.

    inner L_IR^j = 1 − mean_i mean(topK(A_i ⊙ M_i)),     K = top_k_count(|M_i|, r)
    outer L_OR^j =     mean_i mean(topK(A_i ⊙ (1 − M_i))), K = top_k_count(|1 − M_i|, r)

    Top-K runs over the whole frame of the masked map, as the official code does (maps are ≥ 0,
    so that equals top-K inside the mask). Edge cases the official code leaves to NaN:
    a frame whose region covers the whole frame has no outside and contributes 0 to the outer
    mean; a frame where the object's mask is empty (it left the view) is left out of the inner
    mean, and a word with no region in any frame gets L_IR = 0 (nothing to pull in)."""
    if word_maps.shape != masks.shape or word_maps.dim() != 4:
        raise ValueError(f"word_maps and masks must both be (J, F, h, w), got {tuple(word_maps.shape)} and {tuple(masks.shape)}")
    if not 0 < top_k_ratio <= 1:
        raise ValueError(f"top_k_ratio must be in (0, 1], got {top_k_ratio!r}")
    maps = word_maps.flatten(2)
    inside = masks.to(maps.dtype).flatten(2)
    outside = 1 - inside
    area_in, area_out = inside.sum(-1), outside.sum(-1)

    fg = _top_k_mean(maps * inside, top_k_count(area_in, top_k_ratio, top_k_rounding))  # (J, F)
    present = (area_in > 0).to(maps.dtype)
    n_present = present.sum(-1)
    fg_mean = torch.where(n_present > 0, (fg * present).sum(-1) / n_present.clamp(min=1), torch.ones_like(n_present))
    inner = 1 - fg_mean

    bg = _top_k_mean(maps * outside, top_k_count(area_out, top_k_ratio, top_k_rounding)) * (area_out > 0).to(maps.dtype)
    outer = bg.mean(-1)
    return inner, outer


def rad_loss(inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """L = Σ_j max(0, L_IR^j) + Σ_j L_OR^j (a scalar with the maps' graph)."""
    return inner.clamp(min=0).sum() + outer.sum()


# ----------------------------------------------------------------------------- schedule


def step_sizes(num_steps: int, step_size: float = 20.0, step_range: tuple[float, float] = (1.0, 0.5)) -> torch.Tensor:
    """α_i = step_size · sqrt(linspace(r0, r1, num_steps)[i]), indexed by the denoising step i
    (0 = the noisiest), as the official `scale_factor * np.sqrt(scale_range[i])`. float64."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    r0, r1 = (float(v) for v in step_range)
    if r0 < 0 or r1 < 0:
        raise ValueError(f"step_range: both ends must be ≥ 0 (they go under a square root), got {list(step_range)}")
    return float(step_size) * torch.sqrt(torch.linspace(r0, r1, num_steps, dtype=torch.float64))


def frame_scale(n_frames: int, calibration_frames: int | None) -> float:
    """Factor on α for a RAD pass over `n_frames` frames (rad.calibration_frames).

    The RAD terms are means over the pass's frames, so ∂L/∂x of one frame carries a 1/F; the
    official α was set on 4-frame windows. Scaling α by F / calibration_frames gives every frame
    the push of a calibration-sized pass (for the gradient, the same as summing the terms over
    frames and dividing by calibration_frames), while the loss values — and the refinement
    thresholds read on them — stay means. None: 1 (no calibration)."""
    if calibration_frames is None:
        return 1.0
    return n_frames / calibration_frames


def refinement_target(step_index: int, thresholds: Mapping | None) -> float | None:
    """The refinement threshold scheduled at denoising step `step_index`, or None.
    Keys are step indices (ints, or digit strings as JSON leaves them)."""
    if not thresholds:
        return None
    for key, value in thresholds.items():
        if int(key) == step_index:
            return float(value)
    return None


def needs_refinement(inner_losses: torch.Tensor, threshold: float) -> bool:
    """True while max_j max(0, L_IR^j) > max(0, 1 − threshold), i.e. until every word's inner
    top-K mean fg_j reaches the threshold (the official loop condition `loss_fg > target_loss`)."""
    if inner_losses.numel() == 0:
        return False
    worst = float(inner_losses.detach().clamp(min=0).max())
    return worst > max(0.0, 1.0 - float(threshold))


# ----------------------------------------------------------------------------- reporting


def word_labels(words: Sequence[str]) -> list[str]:
    # Two objects may name the same word (different occurrences): keep their keys apart.
    seen: dict[str, int] = {}
    labels = []
    for w in words:
        seen[w] = seen.get(w, 0) + 1
        labels.append(w if seen[w] == 1 else f"{w}#{seen[w]}")
    return labels


class RADLossLog:
    """Per-step, per-word RAD losses, JSON-able (for report.json)."""

    def __init__(self, words: Sequence[str]):
        self.words = word_labels(list(words))
        self.steps: list[dict] = []

    def add(self, step: int, timestep: int, inner: torch.Tensor, outer: torch.Tensor, refinement_iters: int = 0, **extra) -> dict:
        inner_v = [float(v) for v in inner.detach().flatten()]
        outer_v = [float(v) for v in outer.detach().flatten()]
        if len(inner_v) != len(self.words) or len(outer_v) != len(self.words):
            raise ValueError(f"expected {len(self.words)} values per term, got {len(inner_v)} and {len(outer_v)}")
        record = {
            "step": int(step),
            "timestep": int(timestep),
            "loss": sum(max(0.0, v) for v in inner_v) + sum(outer_v),
            "inner": dict(zip(self.words, inner_v)),
            "outer": dict(zip(self.words, outer_v)),
            "refinement_iters": int(refinement_iters),
            **extra,
        }
        if any(not math.isfinite(v) for v in inner_v + outer_v):
            record["non_finite"] = True
        self.steps.append(record)
        return record

    def series(self, term: str, word: str) -> list[float]:
        """One word's `inner` or `outer` term over the recorded steps."""
        return [s[term][word] for s in self.steps]

    def to_dict(self) -> dict:
        return {"words": list(self.words), "steps": [dict(s) for s in self.steps]}
