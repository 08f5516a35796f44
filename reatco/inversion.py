"""DDIM inversion of source latents, keeping the whole trajectory, with an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
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
    """A stable hash of everything the trajectory depends on (model, video, frames, size, steps…)."""
    blob = json.dumps(what_produced_it, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def file_fingerprint(path: str | os.PathLike | None) -> str | None:
    """Identity of a file or folder for cache keys: path, sizes and modification times."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return str(path)  # a hub id: the id itself identifies it
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    stats = [(str(f.relative_to(p) if p.is_dir() else f.name), f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return hashlib.sha256(json.dumps([str(p.resolve()), stats]).encode()).hexdigest()[:24]


def load_or_invert(cache_dir: str | os.PathLike | None, key: str, invert: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Return the cached trajectory for `key`, or compute it with `invert()` and store it atomically."""
    if cache_dir is None:
        return invert()
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists():
        logger.info("using cached DDIM inversion %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    trajectory = invert()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(trajectory.detach().cpu(), tmp)
    os.replace(tmp, path)
    return trajectory
