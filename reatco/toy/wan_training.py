"""Training of the shapes-world Wan model (`reatco.toy.wan_model`) on CPU, in chunks that survive a
session's end (scripts/train_shapes_model.py --backbone wan is the command line).

Stages (`STAGES`), each checkpointing into `work` and resuming from its last checkpoint:
  vae          AutoencoderKLWan on clips of the world (vae_frames-frame windows — whole 9-frame clips by default:
               a 5-frame window is one latent chunk, and the decoder must learn a chunk that follows
               another — in latent-cell-aligned crops of a fixed pool of 9-frame clips: crops are cheaper),
               L1 + MSE + tiny KL on the decoder's unclamped output, EMA; stops at vae_steps or when the EMA's held-out PSNR (whole
               9-frame 64 × 64 clips) reaches target_psnr.
  data         the transformer's training set: posterior moments of n_clips 9-frame and
               n_long_clips 17-frame clips under the VAE (EMA weights), token ids, each object's
               word indices and per-latent-frame cell coverage; built in resumable chunks.
  transformer  WanTransformer3DModel + UMT5 encoder trained jointly from scratch on flow matching
               (x_σ = (1 − σ)·x₀ + σ·ε, target ε − x₀, σ uniform), 10 % caption dropout, EMA, and the
               attention loss on attn2 of ATTENTION_BLOCKS (each object word's attention on its
               object's cells, and the object words' share of the prompt there) that made the SD
               shapes model's cross-attention localise; exports to `out` every export_every steps.
  decoder      the VAE's decoder alone, fine-tuned from the VAE's EMA with the encoder frozen (so the
               latents, the data set and the transformer stay valid), on clips and on joins of two clips'
               latents along latent-grid rectangles that move from latent frame to latent frame, each
               decoded into the same join of the pixels (IRJS keeps the source's latents outside the
               regions: a decoder that never saw such joins smears one side into the other at the seam).
  all          vae → data → transformer → decoder, each resumed where it stands (the background command).
  export       the Wan pipeline folder from the latest checkpoints (EMA weights).
  eval         the model's three gates on the latest checkpoints (`reatco.toy.wan_eval`).

Every random draw of a step comes from a generator seeded by (seed, stage, step) and the
learning rate is a function of the step, so a chunk resumed from a checkpoint (model, optimizer,
EMA, RNG, step = the data-order position) continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..cli import settings_class
from ..environment import package_versions
from ..errors import ConfigError
from ..files import atomic_file, new_partial_dir, replace_dir
from ..metrics.fidelity import image_psnr
from . import wan_model as wm
from .wan_eval import evaluate_checkpoint, load_models, load_vae, vae_psnr
from .training import HELDOUT_OFFSET, STOP, log, note_command

WanTrainSettings = settings_class("WanTrainSettings", [
    ("max_minutes", Optional[float], None), ("stop_after", Optional[int], None), ("resume", bool, False),
    ("out", str, "data/shapes-wan"), ("work", str, "data/shapes-wan-train"), ("seed", int, 0),
    ("checkpoint_minutes", float, 5.0), ("progress", bool, True),
    ("vae_config", Optional[str], None), ("transformer_config", Optional[str], None),
    # the VAE stage
    ("vae_steps", int, 12000), ("vae_lr", float, 1e-3), ("vae_lr_end", float, 5e-5), ("vae_warmup", int, 100),
    ("vae_batch", int, 4), ("vae_pool", int, 1024), ("vae_frames", int, 9), ("vae_crop", int, 48),
    ("vae_kl", float, 1e-6), ("vae_ema", float, 0.998), ("target_psnr", float, 31.0),
    ("vae_eval_every", int, 250), ("vae_eval_clips", int, 16),
    # the data stage
    ("n_clips", int, 4000), ("n_long_clips", int, 400),
    # the transformer stage
    ("steps", int, 15000), ("batch", int, 16), ("lr", float, 5e-4), ("lr_end", float, 3e-5), ("warmup", int, 300),
    ("ema", float, 0.999), ("cfg_drop", float, 0.1), ("attn_weight", float, 0.05), ("token_attn_weight", float, 0.05),
    ("long_every", int, 5), ("export_every", int, 1000),
    # the decoder stage
    ("decoder_steps", int, 4000), ("decoder_lr", float, 3e-4), ("decoder_lr_end", float, 1e-5),
    ("decoder_warmup", int, 100), ("decoder_batch", int, 4), ("decoder_join", float, 0.5),
    ("decoder_ema", float, 0.998), ("decoder_eval_every", int, 250),
    # the eval stage (reatco.toy.wan_eval)
    ("eval_model", Optional[str], None), ("eval_clips", int, 16), ("eval_samples", int, 32), ("eval_steps", int, 30),
    ("eval_cfg", float, 5.0), ("eval_attention_clips", int, 16),
], "One chunk of the Wan shapes model's training (scripts/train_shapes_model.py --backbone wan).", __name__)

STAGE_CODES = {"vae": 1, "transformer": 2, "decoder": 3}


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The generator of one step's random draws: a function of (seed, stage, step) only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + STAGE_CODES[stage] * 7_919 + step * 104_729) % (2 ** 63))


def cosine_lr(step: int, total: int, lr: float, lr_end: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr_end + 0.5 * (lr - lr_end) * (1 + math.cos(math.pi * frac))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


def atomic_save(obj, path: Path) -> None:
    with atomic_file(path) as tmp:  # a kill mid-write leaves the previous checkpoint
        torch.save(obj, tmp)


def _config(base: dict, override: Optional[str], field: str) -> dict:
    if not override:
        return dict(base)
    try:
        extra = json.loads(override)
    except json.JSONDecodeError as err:
        raise ConfigError(field, f"not JSON ({err}); give an object such as '{{\"base_dim\": 8}}'") from None
    if not isinstance(extra, dict):
        raise ConfigError(field, "give a JSON object of config fields, e.g. '{\"base_dim\": 8}'")
    return {**base, **extra}


def vae_config(args) -> dict:
    return _config(wm.VAE_CONFIG, args.vae_config, "vae_config")


def transformer_config(args) -> dict:
    return _config(wm.TRANSFORMER_CONFIG, args.transformer_config, "transformer_config")


class Chunk:
    """When this command stops: max_minutes (whole command), stop_after (steps of each stage),
    SIGTERM/SIGINT; and when to write a checkpoint (every checkpoint_minutes)."""

    def __init__(self, args):
        self.t0 = time.time()
        self.deadline = None if args.max_minutes is None else self.t0 + 60 * args.max_minutes
        self.stop_after = args.stop_after
        self.every = 60 * args.checkpoint_minutes

    def stage(self):
        self.stage_steps, self.last_ck = 0, time.time()

    def stepped(self) -> bool:
        """Count a step; True when the chunk must end after it."""
        self.stage_steps += 1
        return (bool(STOP) or (self.deadline is not None and time.time() >= self.deadline)
                or (self.stop_after is not None and self.stage_steps >= self.stop_after))

    def checkpoint_due(self) -> bool:
        if time.time() - self.last_ck >= self.every:
            self.last_ck = time.time()
            return True
        return False


def _progress(args, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=not args.progress, mininterval=0.5 if tty else 60,
                dynamic_ncols=True)


def _check_fresh(path: Path, args) -> bool:
    """True when `path` should be resumed; an existing checkpoint without --resume is an error
    (it would be silently overwritten)."""
    if path.exists() and not args.resume:
        raise ConfigError("resume", f"{path} exists: pass --resume to continue it, or choose another --work")
    return path.exists()


# =============================================================================== VAE

def clip_pool(seed: int, n: int, n_frames: int = 9) -> np.ndarray:
    """(n, F, H, W, 3) uint8 clips of the world, a function of the seed."""
    return np.stack([wm.make_clip(seed, i, n_frames).frames for i in range(n)])


def heldout_clips(seed: int, n: int, n_frames: int = 9) -> torch.Tensor:
    return wm.clip_tensor([wm.make_clip(seed + HELDOUT_OFFSET, i, n_frames) for i in range(n)])


def vae_batch(pool: np.ndarray, gen: torch.Generator, batch: int, frames: int, crop: int) -> torch.Tensor:
    """A batch of windows of `frames` frames and crop × crop pixels (latent-cell aligned) from the pool,
    each rotated by a multiple of 90° (the VAE has no up or down)."""
    n, f_all, size = pool.shape[0], pool.shape[1], pool.shape[2]
    out = []
    for _ in range(batch):
        i = int(torch.randint(0, n, (1,), generator=gen))
        f0 = int(torch.randint(0, f_all - frames + 1, (1,), generator=gen))
        y, x = (int(v) * wm.SPATIAL for v in torch.randint(0, (size - crop) // wm.SPATIAL + 1, (2,), generator=gen))
        k = int(torch.randint(0, 4, (1,), generator=gen))
        clip = torch.from_numpy(pool[i, f0:f0 + frames, y:y + crop, x:x + crop].copy())
        out.append(torch.rot90(clip, k, dims=(1, 2)))
    return world_to_tensor(torch.stack(out))


def world_to_tensor(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) → (B, 3, F, H, W) in [-1, 1]."""
    return clips.float().div(127.5).sub(1.0).permute(0, 4, 1, 2, 3).contiguous()


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """AutoencoderKLWan.decode without its final clamp to [−1, 1] (the same frame-by-frame causal
    decode): a clamped pixel gets no gradient, and the decoder's random start puts many pixels
    outside [−1, 1], where they would only be pulled back through the weights they share."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, 2)


def _resume_autoencoder(ck: Path, args, model, ema, opt, name: str, fresh: dict) -> dict:
    """The VAE or decoder stage's state: its checkpoint `ck` loaded into model, EMA, optimizer and
    the RNG where there is one (with --resume), else `fresh`."""
    if not _check_fresh(ck, args):
        return fresh
    s = torch.load(ck, weights_only=False)
    model.load_state_dict(s["model"]), ema.load_state_dict(s["ema"]), opt.load_state_dict(s["opt"])
    torch.set_rng_state(s["torch_rng"])
    log(f"resumed the {name} at step {s['state']['step']}")
    return s["state"]


def train_vae(args, chunk: Chunk) -> bool:
    """Returns True when the VAE is finished (its step budget or the PSNR target reached)."""
    work = Path(args.work)
    ck = work / "vae.pt"
    torch.manual_seed(args.seed)
    vae = wm.build_vae(vae_config(args))
    ema = copy.deepcopy(vae).requires_grad_(False)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    state = _resume_autoencoder(ck, args, vae, ema, opt, "VAE", dict(step=0, history=[], wall_s=0.0, done=False, losses=[]))
    if state["done"]:
        return True
    if args.vae_frames < 1 or (args.vae_frames - 1) % wm.TEMPORAL:
        raise ConfigError("vae_frames", f"must be 4k + 1 (Wan's VAE), got {args.vae_frames}")
    if args.vae_crop % wm.SPATIAL or not wm.SPATIAL <= args.vae_crop <= wm.SIZE:
        raise ConfigError("vae_crop", f"must be a multiple of {wm.SPATIAL} from {wm.SPATIAL} to {wm.SIZE}, got {args.vae_crop}")
    log(f"VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters; generating {args.vae_pool} clips")
    pool = clip_pool(args.seed, args.vae_pool)
    held = heldout_clips(args.seed, args.vae_eval_clips)
    chunk.stage()
    wall0, t0 = state["wall_s"], time.time()

    def save():
        state["wall_s"] = wall0 + time.time() - t0
        atomic_save(dict(model=vae.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), state=state,
                         config=vae_config(args), torch_rng=torch.get_rng_state()), ck)

    bar = _progress(args, args.vae_steps, state["step"], "vae")
    losses = state["losses"]  # since the last evaluation (kept across resumes)
    stop = False
    while state["step"] < args.vae_steps and not stop:
        step = state["step"]
        gen = step_generator(args.seed, "vae", step)
        x = vae_batch(pool, gen, args.vae_batch, args.vae_frames, args.vae_crop)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.vae_steps, args.vae_lr, args.vae_lr_end, args.vae_warmup)
        post = vae.encode(x).latent_dist
        rec = decode_unclamped(vae, post.sample(generator=gen))
        kl = 0.5 * (post.mean ** 2 + post.var - 1 - post.logvar).mean()
        loss = ((rec - x).abs() + (rec - x) ** 2).mean() + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        ema_update(ema, vae, min(args.vae_ema, (1 + step) / (10 + step)))
        state["step"] = step = step + 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        stop = chunk.stepped()
        if step % args.vae_eval_every == 0 or step == args.vae_steps:
            p = vae_psnr(ema.eval(), held)
            state["history"].append(dict(step=step, loss=float(np.mean(losses)), psnr=float(p.mean()),
                                         psnr_min=float(p.min()), wall_s=wall0 + time.time() - t0))
            log(f"vae step {step}: loss {np.mean(losses):.4f}, held-out PSNR (EMA) {p.mean():.2f} dB (min {p.min():.2f})")
            losses.clear()
            if p.mean() >= args.target_psnr:
                state["done"] = True
                break
        if chunk.checkpoint_due():
            save()
    state["done"] = state["done"] or state["step"] >= args.vae_steps
    bar.close()
    save()
    log(f"VAE {'finished' if state['done'] else 'paused'} at step {state['step']}")
    return state["done"]


# =============================================================================== decoder

def moving_rectangles(n: int, latent_frames: int, size: int, gen: torch.Generator, drift: int = 2) -> torch.Tensor:
    """(n, 1, latent_frames, size, size) masks: a rectangle per item (2 to ¾ of the grid a side) that
    moves by up to `drift` cells from one latent frame to the next — the latent-frame unions of
    moving boxes along which IRJS joins the source's latents and the edit's."""
    m = torch.zeros(n, 1, latent_frames, size, size)
    largest = max(2, size * 3 // 4)
    for i in range(n):
        h, w = (int(v) for v in torch.randint(2, largest + 1, (2,), generator=gen))
        y, x = int(torch.randint(0, size - h + 1, (1,), generator=gen)), int(torch.randint(0, size - w + 1, (1,), generator=gen))
        for f in range(latent_frames):
            if f:
                dy, dx = (int(v) for v in torch.randint(-drift, drift + 1, (2,), generator=gen))
                y, x = min(max(y + dy, 0), size - h), min(max(x + dx, 0), size - w)
            m[i, 0, f, y:y + h, x:x + w] = 1
    return m


def pixel_mask(latent_mask: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Latent-frame masks (n, 1, f, h, w) → pixel masks (n, 1, F, H, W): each pixel frame takes the
    mask of the latent frame that covers it, each cell its SPATIAL × SPATIAL pixels."""
    index = [g for g, covered in enumerate(wm.latent_frame_groups(n_frames)) for _ in covered]
    m = latent_mask[:, :, index]
    return m.repeat_interleave(wm.SPATIAL, 3).repeat_interleave(wm.SPATIAL, 4)


def join_clips(x: torch.Tensor, z: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` items of a batch (pixels x (B, 3, F, H, W), latents z (B, C, f, h, w)) joined
    with the next item's along moving rectangles: its latents inside, theirs outside, and the
    pixels joined the same way (the decoder's target for the joined latents)."""
    if n < 1 or len(x) < 2:
        return x, z
    m = moving_rectangles(n, z.shape[2], z.shape[-1], gen)
    p = pixel_mask(m, x.shape[2])
    x_in, z_in = x.roll(-1, 0)[:n], z.roll(-1, 0)[:n]
    return (torch.cat([p * x_in + (1 - p) * x[:n], x[n:]]),
            torch.cat([m * z_in + (1 - m) * z[:n], z[n:]]))


def joined_psnr(vae, clips: torch.Tensor, seed: int, batch: int = 4) -> torch.Tensor:
    """Per-clip PSNR (dB) of decoding held-out joins (each clip's latents (mode) with the next
    clip's inside moving rectangles drawn from `seed`) against the same join of the pixels, on
    uint8-rounded frames."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.cat([vae.encode(clips[i:i + batch]).latent_dist.mode() for i in range(0, len(clips), batch)])
        x, z = join_clips(clips, z, len(clips), gen)
        vals = []
        for i in range(0, len(x), batch):
            rec = vae.decode(z[i:i + batch]).sample.clamp(-1, 1)
            a, b = ((x[i:i + batch] + 1) * 127.5).round(), ((rec + 1) * 127.5).round()
            per_frame = image_psnr(a.transpose(1, 2).flatten(0, 1), b.transpose(1, 2).flatten(0, 1), 255.0)
            vals.append(per_frame.view(len(a), -1).mean(1))
    return torch.cat(vals)


def train_decoder(args, chunk: Chunk) -> bool:
    """The decoder fine-tuned from the finished VAE's EMA, its encoder frozen; True when finished."""
    work = Path(args.work)
    ck = work / "decoder.pt"
    if not (work / "vae.pt").exists():
        raise ConfigError("stage", f"{work}/vae.pt is missing: the decoder starts from the trained VAE (--stage vae)")
    vae, vae_ck = load_vae(work, decoder=False)
    if not vae_ck["state"]["done"]:
        raise ConfigError("stage", f"the VAE in {work} is at step {vae_ck['state']['step']}, not finished: the decoder "
                                   "starts from the finished VAE (--stage vae --resume)")
    trainable = [vae.decoder, vae.post_quant_conv]  # the encoder and quant_conv stay the VAE's: the same latents
    for part in trainable:
        part.requires_grad_(True)
    params = [p for part in trainable for p in part.parameters()]
    ema = copy.deepcopy(vae).requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    state = _resume_autoencoder(ck, args, vae, ema, opt, "decoder", dict(step=0, history=[], wall_s=0.0, done=False,
                                                                         losses=[], vae_step=vae_ck["state"]["step"]))
    if state["done"]:
        return True
    if state["vae_step"] != vae_ck["state"]["step"]:
        raise ConfigError("stage", f"{ck} was fine-tuned from the VAE at step {state['vae_step']}, but vae.pt is at step "
                                   f"{vae_ck['state']['step']}: move decoder.pt away to start the decoder again")
    log(f"decoder {sum(p.numel() for p in params) / 1e6:.2f} M trainable parameters (encoder frozen); "
        f"generating {args.vae_pool} clips")
    pool = clip_pool(args.seed, args.vae_pool)
    held = heldout_clips(args.seed, args.vae_eval_clips)
    chunk.stage()
    wall0, t0 = state["wall_s"], time.time()

    def save():
        state["wall_s"] = wall0 + time.time() - t0
        atomic_save(dict(model=vae.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), state=state,
                         config=vae_ck["config"], torch_rng=torch.get_rng_state()), ck)

    def evaluate(step):
        plain, joined = vae_psnr(ema.eval(), held), joined_psnr(ema.eval(), held, args.seed + HELDOUT_OFFSET)
        state["history"].append(dict(step=step, loss=float(np.mean(losses)) if losses else None, psnr=float(plain.mean()),
                                     psnr_min=float(plain.min()), joined_psnr=float(joined.mean()),
                                     joined_psnr_min=float(joined.min()), wall_s=wall0 + time.time() - t0))
        log(f"decoder step {step}: held-out PSNR (EMA) {plain.mean():.2f} dB (min {plain.min():.2f}), "
            f"joined {joined.mean():.2f} dB (min {joined.min():.2f})")
        losses.clear()

    bar = _progress(args, args.decoder_steps, state["step"], "decoder")
    losses = state["losses"]
    if not state["history"]:
        evaluate(0)  # the finished VAE's decoder: the baseline of the fine-tuning
    stop = False
    n_join = int(round(args.decoder_join * args.decoder_batch))
    while state["step"] < args.decoder_steps and not stop:
        step = state["step"]
        gen = step_generator(args.seed, "decoder", step)
        x = vae_batch(pool, gen, args.decoder_batch, args.vae_frames, args.vae_crop)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.decoder_steps, args.decoder_lr, args.decoder_lr_end, args.decoder_warmup)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        x, z = join_clips(x, z, n_join, gen)
        rec = decode_unclamped(vae, z)
        loss = ((rec - x).abs() + (rec - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.decoder_ema, (1 + step) / (10 + step))
        for part in ("decoder", "post_quant_conv"):  # the encoder's EMA stays bit for bit the encoder
            ema_update(getattr(ema, part), getattr(vae, part), decay)
        state["step"] = step = step + 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        stop = chunk.stepped()
        if step % args.decoder_eval_every == 0 or step == args.decoder_steps:
            evaluate(step)
        if chunk.checkpoint_due():
            save()
    state["done"] = state["step"] >= args.decoder_steps
    bar.close()
    save()
    log(f"decoder {'finished' if state['done'] else 'paused'} at step {state['step']}")
    return state["done"]


# =============================================================================== data

def _data_path(args) -> Path:
    return Path(args.work) / f"wan_data_s{args.seed}_n{args.n_clips}_l{args.n_long_clips}.pt"


def _empty_set(n: int, n_frames: int) -> dict:
    t = wm.n_latent_frames(n_frames)
    return dict(n_frames=n_frames, filled=0, moments=torch.zeros(n, 32, t, wm.LATENT, wm.LATENT, dtype=torch.float16),
                ids=torch.zeros(n, wm.TEXT_TOKENS, dtype=torch.long), mask=torch.zeros(n, wm.TEXT_TOKENS, dtype=torch.long),
                obj_tok=torch.full((n, 3, 2), -1, dtype=torch.long),
                cover=torch.zeros(n, 3, t, wm.GRID, wm.GRID, dtype=torch.float16))


def build_data(args, chunk: Chunk) -> bool:
    """The transformer's training set, in chunks of 32 clips (resumable); True when complete."""
    path = _data_path(args)
    partial = path.with_name(path.stem + ".partial.pt")
    if path.exists():
        return True
    vae, vae_state = load_vae(args.work, decoder=False)  # the encoder is all it uses
    tokenizer = wm.build_tokenizer()
    data = torch.load(partial, weights_only=False) if partial.exists() else dict(
        vae_step=vae_state["state"]["step"], short=_empty_set(args.n_clips, 9), long=_empty_set(args.n_long_clips, 17))
    chunk.stage()
    # long clips use their own index range, so the two sets never share a clip
    for name, offset in (("short", 0), ("long", 10_000_000)):
        d = data[name]
        n = len(d["ids"])
        bar = _progress(args, n, d["filled"], f"data ({d['n_frames']} frames)")
        while d["filled"] < n:
            lo, hi = d["filled"], min(n, d["filled"] + 32)
            samples = [wm.make_clip(args.seed, offset + i, d["n_frames"]) for i in range(lo, hi)]
            with torch.no_grad():
                for k in range(0, len(samples), 4):
                    x = wm.clip_tensor(samples[k:k + 4])
                    d["moments"][lo + k:lo + k + len(x)] = vae.encode(x).latent_dist.parameters.half()
            enc = tokenizer([s.caption for s in samples], padding="max_length", max_length=wm.TEXT_TOKENS,
                            truncation=True, return_tensors="pt")
            d["ids"][lo:hi], d["mask"][lo:hi] = enc.input_ids, enc.attention_mask
            for k, s in enumerate(samples):
                pos = wm.word_positions(tokenizer, s.caption)
                cover = wm.cell_coverage(s.masks, d["n_frames"])
                for j, sh in enumerate(s.shapes):
                    d["obj_tok"][lo + k, j] = torch.tensor([pos[sh.color], pos[sh.shape]])
                    d["cover"][lo + k, j] = torch.from_numpy(cover[j])
            d["filled"] = hi
            bar.update(hi - lo)
            stop = bool(STOP) or (chunk.deadline is not None and time.time() >= chunk.deadline)
            if chunk.checkpoint_due() or stop:
                atomic_save(data, partial)
            if stop:
                bar.close()
                log(f"data paused at {hi}/{n} {name} clips")
                return False
        bar.close()
    # per-channel statistics of the latents (sampled like training does), for the pipeline's
    # latents_mean / latents_std
    gen = torch.Generator().manual_seed(args.seed)
    z = torch.cat([sample_latents(data["short"]["moments"][i:i + 256], gen) for i in range(0, args.n_clips, 256)])
    data["latents_mean"] = z.mean((0, 2, 3, 4)).tolist()
    data["latents_std"] = z.std((0, 2, 3, 4)).tolist()
    atomic_save(data, path)
    partial.unlink(missing_ok=True)
    log(f"data ready: {args.n_clips} + {args.n_long_clips} clips; latent std per channel "
        f"{min(data['latents_std']):.3f} … {max(data['latents_std']):.3f}")
    return True


def sample_latents(moments: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean, logvar = moments.float().chunk(2, dim=1)
    return mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(mean.shape, generator=gen)


# =============================================================================== transformer

def attention_losses(maps: torch.Tensor, mask: torch.Tensor, obj_tok: torch.Tensor, cover: torch.Tensor,
                     keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SD shapes model's two attention terms, on a Wan attn2's maps.

    maps (B, N = T·8·8, L) head-averaged probabilities; mask (B, Lt) the real text tokens (the
    last one is </s>); obj_tok (B, 3, 2) colour and shape word indices (−1: no object); cover
    (B, 3, T, 8, 8) each object's cell coverage per latent frame; keep (B,) captions not dropped.
      spatial  1 − mass of each word's per-frame map (renormalised over the real tokens, then
               normalised over the frame's cells) on its object's cells: the word looks at its object;
      share    1 − the object's two words' share of the prompt words' attention (</s> and the
               zero padding left out, as RAD renormalises over the real tokens) on the cells the
               object covers at least half: the word out-weighs the other words there."""
    valid = (obj_tok[..., 0] >= 0) & keep[:, None]
    if not valid.any():
        zero = maps.sum() * 0
        return zero, zero
    b, o = valid.nonzero(as_tuple=True)
    t = cover.shape[2]
    toks = obj_tok[b, o]  # (K, 2)
    length = mask.sum(1)  # real tokens, </s> included
    pos = torch.arange(maps.shape[-1])
    real = (pos[None] < length[:, None]).to(maps.dtype)  # (B, L)
    # the word maps as the editing pipeline reads them: renormalised over the real tokens (where
    # the padding's share varies over the frame, the raw map's shape is not the one RAD sees)
    real_mass = (maps * real[:, None]).sum(-1)[b]  # (K, N)
    a = torch.stack([maps[b, :, toks[:, 0]], maps[b, :, toks[:, 1]]], 1)  # (K, 2, N)
    per_frame = (a / real_mass[:, None].clamp_min(1e-12)).unflatten(-1, (t, -1))  # (K, 2, T, 64)
    p = per_frame / per_frame.sum(-1, keepdim=True).clamp_min(1e-12)
    cov = cover[b, o].flatten(2).to(maps.dtype)  # (K, T, 64)
    spatial = (1 - (p * cov[:, None]).sum(-1)).mean()
    words = (pos[None] < (length - 1)[:, None]).to(maps.dtype)  # (B, L): the prompt's words
    prompt_mass = (maps * words[:, None]).sum(-1)  # (B, N)
    share = a.sum(1) / prompt_mass[b].clamp_min(1e-12)  # (K, N)
    cells = (cov.flatten(1) >= 0.5).to(maps.dtype)
    share_loss = ((1 - share) * cells).sum() / cells.sum().clamp_min(1)
    return spatial, share_loss


def load_data(args) -> dict:
    path = _data_path(args)
    if not path.exists():
        raise ConfigError("work", f"{path} is missing: run --stage data first (or --stage all)")
    return torch.load(path, weights_only=False)


def _batch(d: dict, idx: torch.Tensor, keep: torch.Tensor, empty: tuple[torch.Tensor, torch.Tensor]):
    ids = torch.where(keep[:, None], d["ids"][idx], empty[0])
    mask = torch.where(keep[:, None], d["mask"][idx], empty[1])
    return ids, mask


def train_transformer(args, chunk: Chunk) -> bool:
    work = Path(args.work)
    ck = work / "transformer.pt"
    data = load_data(args)
    torch.manual_seed(args.seed)
    tokenizer = wm.build_tokenizer()
    text, tr = wm.build_text_encoder(tokenizer), wm.build_transformer(transformer_config(args))
    ema_text, ema_tr = copy.deepcopy(text).requires_grad_(False), copy.deepcopy(tr).requires_grad_(False)
    params = list(tr.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    state = dict(step=0, curve=[], wall_s=0.0, done=False, window=[])
    if _check_fresh(ck, args):
        s = torch.load(ck, weights_only=False)
        tr.load_state_dict(s["transformer"]), text.load_state_dict(s["text"]), opt.load_state_dict(s["opt"])
        ema_tr.load_state_dict(s["ema_transformer"]), ema_text.load_state_dict(s["ema_text"])
        state = s["state"]
        torch.set_rng_state(s["torch_rng"])
        log(f"resumed the transformer at step {state['step']}")
    if state["done"]:
        return True
    blocks = [b for b in wm.ATTENTION_BLOCKS if b < len(tr.blocks)]
    store: list = []
    padding = wm.PaddingBias()  # the pipeline's 512-position padding, in TEXT_TOKENS + 1 positions
    wm.install_recorders(tr, blocks, store, padding)
    log(f"transformer {sum(p.numel() for p in tr.parameters()) / 1e6:.2f} M, text encoder "
        f"{sum(p.numel() for p in text.parameters()) / 1e6:.2f} M parameters; attention loss on blocks {blocks}")
    mean = torch.tensor(data["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(data["latents_std"]).view(1, -1, 1, 1, 1)
    e = tokenizer([""], padding="max_length", max_length=wm.TEXT_TOKENS, return_tensors="pt")
    empty = (e.input_ids, e.attention_mask)
    chunk.stage()
    wall0, t0 = state["wall_s"], time.time()

    def save():
        state["wall_s"] = wall0 + time.time() - t0
        atomic_save(dict(transformer=tr.state_dict(), text=text.state_dict(), opt=opt.state_dict(),
                         ema_transformer=ema_tr.state_dict(), ema_text=ema_text.state_dict(), state=state,
                         config=transformer_config(args), blocks=blocks, torch_rng=torch.get_rng_state()), ck)

    bar = _progress(args, args.steps, state["step"], "transformer")
    window = state["window"]  # losses since the last curve point (kept across resumes)
    stop = False
    while state["step"] < args.steps and not stop:
        step = state["step"]
        gen = step_generator(args.seed, "transformer", step)
        use_long = args.long_every > 0 and args.n_long_clips > 0 and step % args.long_every == args.long_every - 1
        d = data["long" if use_long else "short"]
        idx = torch.randint(0, len(d["ids"]), (args.batch,), generator=gen)
        z0 = (sample_latents(d["moments"][idx], gen) - mean) / std
        keep = torch.rand(args.batch, generator=gen) >= args.cfg_drop
        ids, mask = _batch(d, idx, keep, empty)
        sigma = torch.rand(args.batch, generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        s5 = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s5) * z0 + s5 * noise
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, args.lr_end, args.warmup)
        store.clear()
        padding.set(mask, wm.TEXT_TOKENS + 1)
        states = wm.encode_text(text, ids, mask, wm.TEXT_TOKENS + 1)
        pred = tr(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=states).sample
        mse = F.mse_loss(pred, noise - z0)
        loss = mse
        spatial = share = torch.zeros(())
        if store and (args.attn_weight or args.token_attn_weight):
            maps = torch.stack(store).mean(0)
            spatial, share = attention_losses(maps, mask, d["obj_tok"][idx], d["cover"][idx], keep)
            loss = loss + args.attn_weight * spatial + args.token_attn_weight * share
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_tr, tr, decay), ema_update(ema_text, text, decay)
        state["step"] = step = step + 1
        window.append((mse.item(), spatial.item(), share.item()))
        bar.update(1)
        bar.set_postfix(mse=f"{mse.item():.3f}", refresh=False)
        stop = chunk.stepped()
        if step % 100 == 0 or step == args.steps:
            m = np.mean(window, 0)
            state["curve"].append(dict(step=step, mse=float(m[0]), attn=float(m[1]), token_attn=float(m[2]),
                                       lr=opt.param_groups[0]["lr"], wall_s=wall0 + time.time() - t0))
            window.clear()
            log(f"transformer step {step}: mse {m[0]:.4f} attn {m[1]:.3f} share {m[2]:.3f}")
        export_now = args.export_every and step % args.export_every == 0
        if chunk.checkpoint_due() or export_now:
            save()
        if export_now:
            export(args)
    state["done"] = state["step"] >= args.steps
    bar.close()
    save()
    if state["done"]:
        export(args)
    log(f"transformer {'finished' if state['done'] else 'paused'} at step {state['step']}")
    return state["done"]


# =============================================================================== export

def _commands(work: Path) -> list[str]:
    p = Path(work) / "commands.log"
    return p.read_text().splitlines() if p.exists() else []


def _thin(curve: list, n: int) -> list:
    out = curve[:: max(1, len(curve) // n)]
    return out + curve[-1:] if curve and out[-1] is not curve[-1] else out


def export(args) -> Path:
    """Write the Wan pipeline folder (EMA weights) to `out`, atomically (partial folder + rename)."""
    work, out = Path(args.work), Path(args.out)
    tokenizer, text, vae, tr, ck = load_models(work)
    v, t = ck["vae"], ck["transformer"]
    info = dict(
        seed=args.seed, backbone="wan", clip_size=wm.SIZE, frames=[9, 17], vae_scale_factor_spatial=wm.SPATIAL,
        vae_scale_factor_temporal=wm.TEMPORAL, token_px=wm.SPATIAL * t["config"]["patch_size"][-1],
        attention_blocks=t["blocks"], text_tokens=wm.TEXT_TOKENS, pipeline_text_length=wm.PIPELINE_TEXT_LENGTH,
        vae_steps=v["state"]["step"], vae_done=v["state"]["done"], vae_wall_s=round(v["state"]["wall_s"], 1),
        vae_history=v["state"]["history"],
        decoder_steps=v["decoder_state"]["step"] if "decoder_state" in v else None,
        decoder_done=v["decoder_state"]["done"] if "decoder_state" in v else None,
        decoder_wall_s=round(v["decoder_state"]["wall_s"], 1) if "decoder_state" in v else None,
        decoder_history=v["decoder_state"]["history"] if "decoder_state" in v else [],
        transformer_steps=t["state"]["step"], transformer_done=t["state"]["done"],
        transformer_wall_s=round(t["state"]["wall_s"], 1), loss_curve=_thin(t["state"]["curve"], 80),
        settings={k: getattr(args, k) for k in args.__dataclass_fields__ if k not in ("out", "work", "resume", "progress")},
        configs=dict(vae=v["config"], transformer=t["config"], text=wm.TEXT_CONFIG, scheduler=wm.SCHEDULER_CONFIG),
        versions=package_versions(), commands=_commands(work))
    tmp = new_partial_dir(out)
    wm.save_pipeline(tmp, tokenizer, text, vae, tr, info)
    card = out / "README.md"
    if card.exists():  # the model card is written by hand; keep it
        (tmp / "README.md").write_text(card.read_text())
    replace_dir(tmp, out)
    dec = f", decoder step {v['decoder_state']['step']}" if "decoder_state" in v else ""
    log(f"exported transformer step {t['state']['step']} (VAE step {v['state']['step']}{dec}) to {out}")
    return out


def evaluate(args) -> dict:
    return evaluate_checkpoint(args)


def run_all(args, chunk: Chunk) -> bool:
    for stage in (train_vae, build_data, train_transformer, train_decoder):
        if not stage(args, chunk):
            return False
        if STOP or (chunk.deadline is not None and time.time() >= chunk.deadline):
            return False
    return True


STAGES = {
    "vae": lambda a: train_vae(a, Chunk(a)), "data": lambda a: build_data(a, Chunk(a)),
    "transformer": lambda a: train_transformer(a, Chunk(a)), "decoder": lambda a: train_decoder(a, Chunk(a)),
    "all": lambda a: run_all(a, Chunk(a)),
    "export": export, "eval": evaluate,
}


def run_stage(stage: str, settings, command: str | None = None):
    """Run one stage (`STAGES`), first noting `command` in `work`/commands.log."""
    if stage not in STAGES:
        raise ConfigError("stage", f"unknown {stage!r} for --backbone wan; choose from {', '.join(STAGES)}")
    note_command(settings.work, command)
    return STAGES[stage](settings)
