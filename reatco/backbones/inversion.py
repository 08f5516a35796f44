"""DDIM inversion of source latents, keeping the whole trajectory, and the on-disk cache of inversions (DDIM here, Wan's flow inversion in backbones/wan/flow.py)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@torch.no_grad()
def ddim_inversion(
    unet,
    scheduler,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    num_steps: int,
    guidance_scale: float = 1.0,
    uncond_embeddings: torch.Tensor | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Run DDIM backwards from clean latents x_0 to x_T.

    latents (B, C, F, h, w) are the scaled VAE latents. Returns the trajectory (num_steps + 1,
    B, C, F, h, w): index 0 is x_0 and index k the latent at the k-th smallest sampling timestep,
    so sampling step i (timestep `scheduler.timesteps[i]`) pairs with index num_steps − i.
    With guidance_scale > 1, `uncond_embeddings` are required (classifier-free guided inversion).
    """
    scheduler.set_timesteps(num_steps, device=latents.device)
    timesteps = scheduler.timesteps.flip(0)  # ascending
    alphas = scheduler.alphas_cumprod.to(latents.device, torch.float32)
    final_alpha = scheduler.final_alpha_cumprod.to(latents.device, torch.float32)
    step = scheduler.config.num_train_timesteps // num_steps
    trajectory = [latents]
    x = latents
    for t in tqdm(timesteps, desc="DDIM inversion", disable=not progress):
        prev_t = int(t) - step  # the timestep x currently sits at
        a_prev = alphas[prev_t] if prev_t >= 0 else final_alpha
        a_t = alphas[int(t)]
        eps = _predict_noise(unet, x, t, text_embeddings, guidance_scale, uncond_embeddings).float()
        x32 = x.float()
        x0 = (x32 - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        x = (a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps).to(latents.dtype)
        trajectory.append(x)
    return torch.stack(trajectory)


def _predict_noise(unet, x, t, cond, guidance_scale, uncond):
    if guidance_scale <= 1.0:
        return unet(x, t, encoder_hidden_states=cond).sample
    if uncond is None:
        raise ValueError("guided inversion needs uncond_embeddings")
    both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    eps_u, eps_c = both.chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


def inversion_cache_key(**what_produced_it) -> str:
    """A stable hash of everything the trajectory depends on (model, UNet, frames as read, steps…)."""
    from ..fingerprint import cache_key

    return cache_key(kind="inversion", **what_produced_it)


def load_or_invert(cache_dir: str | os.PathLike | None, key: str, invert: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Return the cached trajectory for `key`, or compute it with `invert()` and store it atomically.

    Runs for one key take turns (the second reuses the first's file). A cache file that does not
    load (truncated, damaged) or holds non-finite values is reported with its path and recomputed;
    a non-finite new trajectory raises NonFiniteError and is not stored."""
    from ..errors import check_finite
    from ..files import atomic_file, file_lock

    if cache_dir is None:
        trajectory = invert()
        check_finite(trajectory, "in the inversion", "try model.dtype=float32")
        return trajectory
    path = Path(cache_dir) / f"{key}.pt"
    with file_lock(path.with_name(f".{path.name}.lock"), "inverting the same video"):
        if path.is_dir() and not path.is_symlink():  # not a cache file (a stray folder): recomputed in its place
            logger.warning("the cached inversion %s is a folder, not a file; removing it and inverting again", path)
            shutil.rmtree(path)
        if path.exists() or path.is_symlink():
            try:
                trajectory = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(trajectory, torch.Tensor) or not torch.isfinite(trajectory).all():
                    raise ValueError("it does not hold a finite tensor")
                logger.info("using the cached inversion %s", path)
                return trajectory
            except Exception as err:  # truncated zip, bad pickle, wrong content
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                logger.warning("the cached inversion %s is damaged (%s); inverting again", path, first)
                path.unlink(missing_ok=True)
        trajectory = invert()
        check_finite(trajectory, "in the inversion", "try model.dtype=float32")
        with atomic_file(path) as tmp:
            torch.save(trajectory.detach().cpu(), tmp)
    return trajectory
