"""The shapes-world model's own gates, before any editing (`reatco.bench.shapes` runs them):

  vae          reconstruction PSNR on held-out images (gate ≥ 30 dB)
  text2image   DDIM + CFG samples for held-out captions; the detector checks that every requested
               colour is present with the right shape (gate ≥ 90 % of samples)
  attention    fraction of each object word's 8×8 cross-attention mass inside the object's box,
               on noised held-out images (vs the box's share of the image = chance)

Each takes the benchmark's settings (`reatco.bench.shapes.Settings`) and a diffusers
StableDiffusionPipeline of the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..backbones.tav import rad_attention_layers
from ..backbones.tav.recording import AttentionProbe
from ..metrics.fidelity import image_psnr
from ..toy import world
from ..toy.detector import detect

BENCH_OFFSET = 2_000_000  # held-out seeds: neither training (seed) nor training's held-out (+1e6)


def load_pipe(model: str):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- VAE

def vae_gate(args, pipe) -> dict:
    x, _ = world.image_batch(BENCH_OFFSET + args.seed, 0, args.n_vae)
    vals = []
    with torch.no_grad():
        for i in range(0, len(x), 32):
            xb = x[i:i + 32]
            rec = pipe.vae.decode(pipe.vae.encode(xb).latent_dist.mode()).sample.clamp(-1, 1)
            # PSNR on uint8-rounded images, as they would be saved
            vals.append(image_psnr(((xb + 1) * 127.5).round(), ((rec + 1) * 127.5).round(), 255.0))
    p = torch.cat(vals)
    return dict(psnr_mean=float(p.mean()), psnr_min=float(p.min()), n=len(p), gate=30.0,
                passed=bool(p.mean() >= 30.0))


# ----------------------------------------------------------------------------- text → image

def heldout_prompts(seed: int, n: int) -> list[world.Sample]:
    """Captions of held-out images (half one object, half two objects)."""
    return [world.make_image(BENCH_OFFSET + seed, 10_000 + i, n_objects=1 + i % 2) for i in range(n)]


def check_sample(image: np.ndarray, shapes: list[world.Shape]) -> dict:
    found = detect(image, [s.color for s in shapes])
    colours_ok = all(found[s.color].found for s in shapes)
    shapes_ok = colours_ok and all(found[s.color].shape == s.shape for s in shapes)
    extra = [d.color for d in detect(image).values() if d.found and d.color not in found]
    return dict(colours=colours_ok, shapes=shapes_ok, extra_colours=extra)


def text2image_gate(args, pipe) -> dict:
    samples = heldout_prompts(args.seed, args.n)
    rows = []
    for i in range(0, len(samples), args.batch):
        chunk = samples[i:i + args.batch]
        g = [torch.Generator().manual_seed(args.seed * 1000 + i + k) for k in range(len(chunk))]
        with torch.no_grad():
            imgs = pipe([s.caption for s in chunk], height=64, width=64, num_inference_steps=args.steps,
                        guidance_scale=args.cfg, generator=g, output_type="np").images
        imgs = (imgs * 255).round().astype(np.uint8)
        for s, im in zip(chunk, imgs):
            rows.append(dict(caption=s.caption, n_objects=len(s.shapes), **check_sample(im, s.shapes)))
        if args.save_samples and i == 0:
            _save_grid(imgs, Path(args.save_samples))
    acc = float(np.mean([r["shapes"] for r in rows]))
    by_n = {n: float(np.mean([r["shapes"] for r in rows if r["n_objects"] == n])) for n in (1, 2)}
    return dict(accuracy=acc, colours_present=float(np.mean([r["colours"] for r in rows])),
                accuracy_1_object=by_n[1], accuracy_2_objects=by_n[2],
                extra_colour_rate=float(np.mean([bool(r["extra_colours"]) for r in rows])),
                n=len(rows), steps=args.steps, guidance_scale=args.cfg, gate=0.9, passed=bool(acc >= 0.9),
                failures=[r["caption"] for r in rows if not r["shapes"]][:10])


def _save_grid(imgs: np.ndarray, path: Path):
    from PIL import Image

    k = min(len(imgs), 16)
    grid = np.concatenate([np.concatenate(list(imgs[r * 8:(r + 1) * 8]), 1) for r in range((k + 7) // 8) if len(imgs[r * 8:(r + 1) * 8]) == 8] or [imgs[0]], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


# ----------------------------------------------------------------------------- attention

def attention_gate(args, pipe, timesteps=(200, 500, 800), cell: int = 8) -> dict:
    """Mass of each object's colour/shape token inside its box at the 8×8 grid, on held-out
    two-object images noised to each timestep (high t = what RAD sees in its first steps)."""
    samples = [world.make_image(BENCH_OFFSET + args.seed, 20_000 + i, n_objects=2) for i in range(args.n_attn)]
    tok = pipe.tokenizer
    store: list = []
    layers = rad_attention_layers(pipe.unet, pipe.vae_scale_factor, cell)  # the RAD grid
    old = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor({**old, **{k: AttentionProbe(store) for k in layers}})
    per_t = {}
    try:
        x = world.to_tensor(np.stack([s.image for s in samples]))
        captions = [s.caption for s in samples]
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            z = pipe.vae.encode(x).latent_dist.mode() * pipe.vae.config.scaling_factor
            text = pipe.encode_prompt(captions, pipe.device, 1, False)[0]  # the pipeline's own prompt encoder
        for t in timesteps:
            with torch.no_grad():
                a = pipe.scheduler.alphas_cumprod[t]
                zt = a.sqrt() * z + (1 - a).sqrt() * torch.randn(z.shape, generator=g)
                store.clear()
                pipe.unet(zt, torch.full((len(samples),), t), text)
            maps = torch.stack(store).mean(0)  # (B, 64, L)
            side = int(maps.shape[1] ** 0.5)
            inside, chance, peak = [], [], []
            for b, s in enumerate(samples):
                words = tok.convert_ids_to_tokens(ids[b].tolist())
                for j, sh in enumerate(s.shapes):
                    x1, y1, x2, y2 = s.boxes[j, 0]
                    box = np.zeros((64, 64), bool)
                    box[y1:y2, x1:x2] = True
                    cov = torch.from_numpy(box.reshape(side, cell, side, cell).mean((1, 3))).flatten().float()
                    for w in (sh.color, sh.shape):
                        m = maps[b, :, words.index(w + "</w>")]
                        p = m / m.sum()
                        inside.append(float((p * cov).sum()))
                        chance.append(float(cov.mean()))
                        peak.append(bool(cov[p.argmax()] > 0))
            per_t[t] = dict(mass_in_box=float(np.mean(inside)), box_share=float(np.mean(chance)),
                            ratio=float(np.mean(inside) / np.mean(chance)), peak_in_box=float(np.mean(peak)))
    finally:
        pipe.unet.set_attn_processor(old)
    mid = per_t[timesteps[len(timesteps) // 2]]
    return dict(**mid, per_timestep=per_t, layers=layers, n=2 * 2 * len(samples))
