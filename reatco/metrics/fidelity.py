"""Invariant-region fidelity (paper Table 3): how much the edit changed what it should not touch.

The invariant region is the complement of the union of all objects' regions. Both metrics compare
the edited frames with the source frames there only:

- PSNR with a mask-normalised MSE: MSE = sum over frames, pixels and channels of
  (edited - source)^2 * invariant / (3 * number of invariant pixels), pooled over the whole clip;
  PSNR = 10 log10(255^2 / MSE). It is +inf when nothing outside the regions changed.
- LPIPS (Zhang et al. 2018; richzhang/PerceptualSimilarity), AlexNet trunk with the v0.1 linear
  heads, inputs scaled to [-1, 1]. Masked variant: LPIPS's spatial distance map (each layer's
  distance upsampled bilinearly to the image size, summed over layers, as `spatial=True` does)
  averaged over the invariant pixels of each frame, then over frames. A frame-level LPIPS of a
  composite would let the edited region leak in through the receptive fields of every pixel near
  it and would scale with the region's area; the masked map keeps the normalisation of the PSNR.
  Without a mask it is the standard image-level LPIPS, mean over frames.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..environment import resolve_device
from ._cache import cached

# torchvision's AlexNet is what LPIPS(net="alex") downloads; "random" is for tests only.
LPIPS_BACKBONES = ("torchvision", "random")


def invariant_mask(region_masks) -> np.ndarray:
    """(F, H, W) bool, True outside every region. Accepts (J, F, H, W) or an (F, H, W) union."""
    m = np.asarray(region_masks).astype(bool)
    if m.ndim == 4:
        m = m.any(axis=0)
    if m.ndim != 3:
        raise ValueError(f"region masks must be (J, F, H, W) or (F, H, W), got shape {m.shape}")
    return ~m


def _check(edited: np.ndarray, source: np.ndarray, invariant: np.ndarray | None) -> None:
    if edited.shape != source.shape or edited.ndim != 4 or edited.shape[-1] != 3:
        raise ValueError(f"edited {edited.shape} and source {source.shape} must both be (F, H, W, 3)")
    if invariant is not None and invariant.shape != edited.shape[:3]:
        raise ValueError(f"invariant mask {invariant.shape} must be (F, H, W) = {edited.shape[:3]}")


def masked_psnr(edited: np.ndarray, source: np.ndarray, invariant: np.ndarray | None = None,
                data_range: float = 255.0) -> float:
    """PSNR over the invariant pixels of a clip (uint8 frames (F, H, W, 3)); +inf if identical there."""
    edited, source = np.asarray(edited), np.asarray(source)
    invariant = None if invariant is None else np.asarray(invariant, dtype=bool)
    _check(edited, source, invariant)
    weight = np.ones(edited.shape[:3], bool) if invariant is None else invariant
    count = weight.sum() * edited.shape[-1]
    if count == 0:
        return math.nan  # the regions cover everything: nothing is invariant
    err = (edited.astype(np.float64) - source.astype(np.float64)) ** 2
    mse = float((err * weight[..., None]).sum() / count)
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def image_psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-image PSNR (B,) of two batches (B, ...) whose values span `data_range` (255 for uint8
    levels, 2 for [-1, 1]); identical images give 10 log10(data_range² / 1e-10), not inf.
    The whole-image counterpart of `masked_psnr`, on tensors, for the shapes model's gates."""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10))


def load_lpips(backbone: str = "torchvision", device: str | None = None):
    """LPIPS-AlexNet (v0.1 heads, shipped inside the lpips package) with the trunk weights from:
    "torchvision" (torch hub cache, downloaded if absent), a local AlexNet state-dict file
    (torchvision's alexnet-owt-7be5be79.pth), or "random" (tests only)."""
    device = str(resolve_device(device, field="device"))
    return cached(("lpips", backbone, device), lambda: _load_lpips(backbone, device))


def _load_lpips(backbone: str, device: str):
    import lpips

    from_file = backbone not in LPIPS_BACKBONES
    if from_file and not os.path.isfile(backbone):
        from ..errors import ConfigError

        raise ConfigError("lpips_backbone", f"{backbone!r} is neither {LPIPS_BACKBONES} nor an AlexNet weights file")
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=backbone != "torchvision", verbose=False)
    if from_file:
        _load_alexnet_trunk(model, backbone)
    return model.eval().to(device)


def _load_alexnet_trunk(model, path: str) -> None:
    """Copy torchvision AlexNet `features.<i>.*` weights into lpips' slices (module names are <i>)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for slice_module in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, layer in slice_module.named_children():
            for pname, param in layer.named_parameters(recurse=False):
                param.data.copy_(state[f"features.{name}.{pname}"])


def _to_lpips_input(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (F, 3, H, W) in [-1, 1], as LPIPS expects."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@torch.no_grad()
def lpips_distance(edited: np.ndarray, source: np.ndarray, invariant: np.ndarray | None = None, model=None,
                   batch_size: int = 8, **load_kwargs) -> float:
    """Mean over frames of LPIPS, restricted to the invariant pixels when a mask is given."""
    edited, source = np.asarray(edited), np.asarray(source)
    invariant = None if invariant is None else np.asarray(invariant, dtype=bool)
    _check(edited, source, invariant)
    model = model or load_lpips(**load_kwargs)
    device = next(model.parameters()).device
    values = []
    for start in range(0, len(edited), batch_size):
        sl = slice(start, start + batch_size)
        a, b = _to_lpips_input(edited[sl], device), _to_lpips_input(source[sl], device)
        model.spatial = invariant is not None  # lpips reads this flag in forward
        try:
            dist = model(a, b).float()
        finally:
            model.spatial = False
        if invariant is None:
            values.extend(dist.flatten().tolist())
            continue
        weight = torch.from_numpy(invariant[sl]).to(device).float()  # (f, H, W)
        area = weight.sum(dim=(1, 2))
        masked = (dist[:, 0] * weight).sum(dim=(1, 2)) / area.clamp(min=1)
        values.extend(v for v, n in zip(masked.tolist(), area.tolist()) if n > 0)
    return float(np.mean(values)) if values else math.nan
