"""Invariant Region-guided Joint Sampling (IRJS): outside the objects' regions, the latent is the
source video's latent at the same noise level, so the background is kept exactly.

    x̃ = x ⊙ M + V_t ⊙ (1 − M),   M = union of the regions (1 = editable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F



def noise_source(scheduler, x0: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
    """V_t = sqrt(ᾱ_t)·V_0 + sqrt(1 − ᾱ_t)·ε — `scheduler.add_noise` semantics (DDPM/DDIM), with ᾱ
    read from `scheduler.alphas_cumprod` at `timestep` itself (also for t = 0, which is not the
    clean latent: ᾱ_0 < 1). Computed in float32 at least (float64 stays), returned in x0's dtype."""
    t = int(timestep.item() if torch.is_tensor(timestep) else timestep)
    alphas = scheduler.alphas_cumprod
    if not 0 <= t < len(alphas):
        raise ValueError(f"timestep {t} is outside the scheduler's 0…{len(alphas) - 1}")
    if noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the latents' shape {tuple(x0.shape)}")
    work = torch.promote_types(x0.dtype, torch.float32)
    a = alphas[t].to(device=x0.device, dtype=work)
    out = a.sqrt() * x0.to(work) + (1 - a).sqrt() * noise.to(x0.device, work)
    return out.to(x0.dtype)


def latent_region_mask(masks: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """(J, F, gh, gw) object masks or an (F, gh, gw) union → (1, 1, F, latent_h, latent_w) union mask.

    Masks should already be on the latent grid (regions.object_masks(…, latent_h, latent_w));
    another grid is resampled: an integer upscale by nearest (exact), otherwise by area ≥ 0.5."""
    if masks.dim() == 4:
        masks = masks.amax(dim=0)
    if masks.dim() != 3:
        raise ValueError(f"expected (J, F, h, w) or (F, h, w) masks, got shape {tuple(masks.shape)}")
    m = masks.float()
    gh, gw = m.shape[-2:]
    if (gh, gw) != (latent_h, latent_w):
        if latent_h % gh == 0 and latent_w % gw == 0:
            m = F.interpolate(m[:, None], size=(latent_h, latent_w), mode="nearest")[:, 0]
        else:
            m = (F.interpolate(m[:, None], size=(latent_h, latent_w), mode="area")[:, 0] >= 0.5).float()
    return m[None, None]


def feather_mask(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Soften the region's edge outward over `cells` latent cells, per frame.

    A cell at chessboard distance d from the region gets 1 − d/(cells + 1): the region itself
    stays exactly 1 (fully editable) and every cell farther than `cells` stays exactly 0 (exactly
    the source), so only a band of `cells` cells around the region mixes the two. cells = 0 →
    unchanged. Works on (..., h, w)."""
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 0:
        raise ValueError(f"cells (the feather) must be a number of latent cells ≥ 0, got {cells!r}")
    if cells == 0:
        return mask
    shape = mask.shape
    current = mask.reshape(-1, 1, *shape[-2:]).float()
    out = current.clone()
    for d in range(1, cells + 1):
        current = F.max_pool2d(current, kernel_size=3, stride=1, padding=1)  # one more ring of cells
        out = torch.maximum(out, current * (1 - d / (cells + 1)))
    return out.reshape(shape).to(mask.dtype)


def blend(latents: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x ⊙ M + V_t ⊙ (1 − M) for latents (B, C, F, h, w), source (B or 1, C, F, h, w) and a mask
    (F, h, w), (1, 1, F, h, w) or (B, C, F, h, w). Where M is 0 the result is exactly the source,
    where M is 1 exactly the latents."""
    if latents.dim() != 5:
        raise ValueError(f"latents must be (B, C, F, h, w), got {tuple(latents.shape)}")
    if mask.dim() == 3:
        mask = mask[None, None]
    try:
        torch.broadcast_shapes(latents.shape, source.shape, mask.shape)
    except RuntimeError as err:
        raise ValueError(
            f"cannot blend latents {tuple(latents.shape)} with source {tuple(source.shape)} and mask {tuple(mask.shape)}"
        ) from err
    mask = mask.to(device=latents.device, dtype=latents.dtype)
    return latents * mask + source.to(latents) * (1 - mask)


class InvariantRegion:
    """IRJS for one edit: the blend mask and the source latents V_t at each sampling step.

    `backbone` (reatco.backbones.base.Backbone) gives the run's timesteps and re-noises the
    source at a step. `cells`: (1, 1, F, h, w) latent cells of the regions (1 = editable), softened by
    `settings.feather`; `source_latents` V_0 (1, C, F, h, w); `trajectory` its DDIM inversion
    (steps + 1, 1, C, F, h, w) where `settings.source == "inversion"`; otherwise V_t is V_0 noised
    with fresh noise drawn from `generator` (one draw for the clip, or one per window where
    `settings.noise == "per_window"`, as the official loop does)."""

    def __init__(self, backbone, settings, cells: torch.Tensor, source_latents: torch.Tensor,
                 trajectory: torch.Tensor | None, generator: torch.Generator | None = None):
        self.backbone = backbone
        self.settings = settings
        self.mask = feather_mask(cells, settings.feather) if settings.feather else cells
        self.source_latents = source_latents
        self.trajectory = trajectory
        self.generator = generator
        self._clip_source: tuple[int, torch.Tensor] | None = None  # (step, V_t) drawn for the whole clip

    def source(self, step_index: int, t=None, frames=None) -> torch.Tensor:
        """V at the noise level of sampling step `step_index` (step_index == steps → the clean V_0),
        for every frame or only `frames` (then the noise is drawn for those frames alone)."""
        n_steps = len(self.backbone.timesteps)
        source, trajectory = self.source_latents, self.trajectory
        if frames is not None:
            source = source[:, :, frames]
            trajectory = None if trajectory is None else trajectory[:, :, :, frames]
        if step_index >= n_steps:
            return source
        if self.settings.source == "inversion":
            return trajectory[n_steps - step_index]
        timestep = self.backbone.timesteps[step_index] if t is None else t
        noise = torch.randn(source.shape, generator=self.generator, device=torch.device("cpu")).to(source)
        return self.backbone.renoise_source(source, timestep, noise)

    def before_step(self, latents: torch.Tensor, step_index: int, t, frames, n_windows: int = 1) -> torch.Tensor:
        """The window `frames` of x_t (latents holds those frames) blended with V_t before the
        UNet call (placement "before_step"; otherwise unchanged)."""
        if self.settings.placement != "before_step":
            return latents
        if self.settings.noise == "per_window" and n_windows > 1:
            return blend(latents, self.source(step_index, t, frames), self.mask[:, :, frames])
        if self._clip_source is None or self._clip_source[0] != step_index:
            self._clip_source = (step_index, self.source(step_index, t))
        return blend(latents, self._clip_source[1][:, :, frames], self.mask[:, :, frames])

    def after_step(self, latents: torch.Tensor, step_index: int) -> torch.Tensor:
        """x_{t-1} of step `step_index` blended with V at the next step's level (placement
        "after_step"; otherwise unchanged)."""
        if self.settings.placement != "after_step":
            return latents
        return blend(latents, self.source(step_index + 1), self.mask)
