"""Flow matching for IRJS and inversion: x_σ = (1 − σ)·x₀ + σ·ε; the model predicts v = ε − x₀; an
Euler step is x ← x + (σ_next − σ)·v (FlowMatchEulerDiscreteScheduler's, Wan's sampler).

A trajectory follows the DDIM inversion's layout so that `reatco.irjs.InvariantRegion` reads it as
it reads a DDIM one: (steps + 1, B, C, F, h, w) with entry k at the noise level of sampling step
steps − k (entry 0 the clean latents, entry `steps` at σ of the first sampling step).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..inversion import inversion_cache_key, load_or_invert  # noqa: F401  (the one cache for both backbones)


def renoise(x0: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
    """(1 − σ)·x₀ + σ·ε in float32 at least, returned in x0's dtype (IRJS's re-noised source)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the latents' shape {tuple(x0.shape)}")
    work = torch.promote_types(x0.dtype, torch.float32)
    s = torch.as_tensor(sigma, dtype=work, device=x0.device)
    return ((1 - s) * x0.to(work) + s * noise.to(x0.device, work)).to(x0.dtype)


def step_sigmas(scheduler) -> torch.Tensor:
    """σ of each sampling step and the final 0 (steps + 1 values, decreasing), as set by
    `scheduler.set_timesteps`."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or len(sigmas) != len(scheduler.timesteps) + 1:
        raise ValueError("the scheduler holds no flow-matching sigmas: call set_timesteps on a FlowMatchEulerDiscreteScheduler")
    return sigmas.detach().to("cpu", torch.float64)


def flow_inversion(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor,
                   sigmas: torch.Tensor, timesteps: torch.Tensor, fixed_point_iters: int = 0,
                   progress: Callable[[], None] | None = None) -> torch.Tensor:
    """Integrate the flow ODE backwards from the clean `latents` (B, C, F, h, w) up the schedule
    `sigmas` (σ_0 > … > σ_N = 0, `timesteps` t_0 … t_N the model's timestep at each σ_i, t_N = 0), with `velocity(x,
    t)` the model's velocity at (x, t). Returns the trajectory (N + 1, B, C, F, h, w) (entry k at
    σ_{N−k}), computed in float32 at least.

    fixed_point_iters = 0: Euler, x_i = x_{i+1} − (σ_{i+1} − σ_i)·v(x_{i+1}, t_{i+1}) — the velocity
    read one level too low, the usual Euler inversion. k > 0: each level solved as the exact inverse
    of the sampler's Euler step, x_i = x_{i+1} − (σ_{i+1} − σ_i)·v(x_i, t_i), by k fixed-point
    iterations started from the Euler guess (k more model calls a step; sampling then retraces the
    trajectory to the fixed point's convergence)."""
    work = torch.promote_types(latents.dtype, torch.float32)
    n = len(sigmas) - 1
    if len(timesteps) != n + 1:
        raise ValueError(f"{n + 1} sigmas need {n + 1} timesteps (the last one 0), got {len(timesteps)}")
    x = latents.to(work)
    out = [x]
    for i in range(n - 1, -1, -1):  # from σ_N = 0 up to σ_0
        d_sigma = float(sigmas[i + 1] - sigmas[i])  # < 0
        target = x
        x = target - d_sigma * velocity(target, timesteps[i + 1]).to(work)
        for _ in range(fixed_point_iters):
            x = target - d_sigma * velocity(x, timesteps[i]).to(work)
        out.append(x)
        if progress is not None:
            progress()
    return torch.stack(out)


def level_timesteps(scheduler) -> torch.Tensor:
    """The model's timestep at every σ of `step_sigmas`: the scheduler's timesteps and 0 for σ = 0."""
    t = scheduler.timesteps
    return torch.cat([t, t.new_zeros(1)])
