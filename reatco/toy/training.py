"""Training of the shapes-world latent diffusion model (a tiny Stable Diffusion) on CPU, in
resumable chunks (scripts/train_shapes_model.py is the command line; its --help shows how the
shipped model was made).

Stages (`STAGES`; each resumes from `work` when `resume` is set):
  vae     AutoencoderKL, 64×64 RGB → 16×16×4 (factor 4), L1+MSE + tiny KL; stops at max_minutes
          or when held-out PSNR reaches target_psnr.
  unet    UNet2DConditionModel (cross-attention only at 8×8 = the RAD grid, and 4×4 in the mid
          block) + CLIPTextModel, trained jointly from scratch on frozen-VAE latents, epsilon
          objective, SD's scaled_linear betas, 10 % caption dropout (for CFG), EMA. A small
          auxiliary loss (attn_weight) pulls each object's colour and shape tokens' 8×8
          cross-attention onto the object's pixels: SD's attention localises by scale and data,
          a 3 M-parameter model trained for an hour does not, and RAD steers exactly these maps.
          Exports to `out` every export_every minutes and at the end.
  vae with decoder_only   keeps training the decoder once the UNet uses the (frozen) encoder;
          init_vae starts from a shipped model, composite trains it on joined latents (what IRJS
          hands the decoder: the source's latent outside the regions, the edit's inside).
  export  write the Stable Diffusion layout from the latest checkpoints (EMA UNet/text weights).
  export_vae   replace only vae/ in `out` after a decoder_only chunk (same encoder, same UNet).

    train_vae(TrainSettings(work="W", max_minutes=25, resume=True))
"""

from __future__ import annotations

import copy
import json
import signal
import time
from typing import Optional
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.tav import rad_attention_layers
from ..backbones.tav.recording import AttentionProbe
from ..cli import settings_class
from ..environment import package_versions
from ..errors import ConfigError
from ..files import atomic_file, new_partial_dir, replace_dir
from ..metrics.fidelity import image_psnr
from . import world
from .tokenizer import MAX_LENGTH, save_tokenizer


# (field, type, default): scripts/train_shapes_model.py's flags, whose --help explains them
TrainSettings = settings_class("TrainSettings", [
    ("max_minutes", float, 20.0), ("resume", bool, False), ("out", str, "data/shapes-model"), ("work", str, "data/shapes-train"),
    ("seed", int, 0),
    # the VAE stage
    ("vae_lr", float, 1e-3), ("vae_lr_end", Optional[float], None), ("vae_batch", int, 16), ("vae_pool", int, 4096),
    ("vae_kl", float, 1e-6), ("target_psnr", float, 31.0), ("decoder_only", bool, False), ("init_vae", Optional[str], None),
    ("composite", float, 0.0), ("composite_seam_weight", float, 0.0), ("composite_perturb", float, 0.0),
    # the UNet stage
    ("n_images", int, 12000), ("batch", int, 32), ("lr", float, 8e-4), ("lr_end", Optional[float], None), ("ema", float, 0.995),
    ("cfg_drop", float, 0.1), ("attn_weight", float, 0.03), ("token_attn_weight", float, 0.0), ("export_every", float, 10.0),
], "One chunk of training (scripts/train_shapes_model.py's flags).", __name__)


STOP = []  # set by SIGTERM/SIGINT (`stop_on_signals`): finish the step, checkpoint (and export), exit


def _request_stop(signum, frame):
    STOP.append(signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGINT end the running stage at its next step, with a checkpoint (and export)."""
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)


HELDOUT_OFFSET = 1_000_000  # held-out seeds: seed + HELDOUT_OFFSET (never seen in training)

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
    mid_block_add_attention=False,  # attention at 16×16 costs time and these images don't need it
)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    # 16×16 (plain) → 8×8 (cross-attention: the RAD grid, 8 px per cell) → 4×4 (plain, + mid attn)
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=16,
    cross_attention_dim=64, attention_head_dim=4,  # (diffusers' name for the number of heads)
)

TEXT_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=MAX_LENGTH, projection_dim=64, hidden_act="quick_gelu")

SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                        steps_offset=1, prediction_type="epsilon")


def note_command(work, command: str | None) -> None:
    """Append `command` with its time to `work`/commands.log (export writes the log into training.json)."""
    Path(work).mkdir(parents=True, exist_ok=True)
    if command:
        with open(Path(work) / "commands.log", "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + command + "\n")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of tensors in [-1, 1] (peak-to-peak 2)."""
    return image_psnr(a.clamp(-1, 1), b.clamp(-1, 1), 2.0)


def heldout_images(seed: int, n: int) -> torch.Tensor:
    x, _ = world.image_batch(seed + HELDOUT_OFFSET, 0, n)
    return x


def atomic_save(obj, path: Path):
    with atomic_file(path) as tmp:  # never a half-written checkpoint
        torch.save(obj, tmp)


# =============================================================================== VAE

def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def train_vae(args):
    torch.manual_seed(args.seed)
    work = Path(args.work)
    vae = build_vae()
    step, history, wall0 = 0, [], 0.0
    ck = work / "vae.pt"
    if args.init_vae and not (args.resume and ck.exists()):
        # Continue from a shipped model's VAE (the UNet's training state need not exist).
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(Path(args.init_vae) / "vae").state_dict())
        info = json.loads((Path(args.init_vae) / "training.json").read_text())
        step, history, wall0 = info["vae_steps"], info["vae_history"], info["vae_wall_s"]
        log(f"VAE from {args.init_vae} at step {step}")
    elif args.resume and ck.exists():
        s = torch.load(ck, weights_only=False)
        vae.load_state_dict(s["model"])
        step, history, wall0 = s["step"], s["history"], s.get("wall_s", 0.0)
        torch.set_rng_state(s["torch_rng"])
        log(f"resumed VAE at step {step}")
    if args.decoder_only:
        # The UNet's latent space is the encoder's: freeze it, keep improving the decoder alone.
        vae.encoder.requires_grad_(False), vae.quant_conv.requires_grad_(False)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.vae_lr, weight_decay=0.0)
    if args.resume and ck.exists() and s.get("decoder_only", False) == args.decoder_only:
        opt.load_state_dict(s["opt"])
    log(f"VAE params {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M")
    # A fixed pool of training images (cheap to regenerate from the seed), flips/rot90 as augmentation.
    pool, _ = world.image_batch(args.seed, 0, args.vae_pool)
    held = heldout_images(args.seed, 128)
    held_masks = rectangle_masks(64, 16, torch.Generator().manual_seed(1))  # (latent, pixel) masks
    held_joined = join(held[:64], held[64:], held_masks[1])
    t0, last_ck, last_eval = time.time(), time.time(), time.time()
    losses = []
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    while True:
        idx = torch.randint(0, len(pool), (args.vae_batch,), generator=gen)
        x = pool[idx]
        k = int(torch.randint(0, 4, (1,), generator=gen))
        x = torch.rot90(x, k, dims=(2, 3))
        lr = args.vae_lr * min(1.0, (step + 1) / 200)
        if args.vae_lr_end is not None:  # linear anneal over this chunk
            lr = args.vae_lr + (args.vae_lr_end - args.vae_lr) * min(1.0, (time.time() - t0) / 60 / args.max_minutes)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.set_grad_enabled(not args.decoder_only):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=gen)
        weight = torch.ones_like(x[:, :1])
        n_mix = int(round(args.composite * len(x)))
        if n_mix:  # decode joined latents into the same join of the pixels (see rectangle_masks)
            m_lat, m_pix = rectangle_masks(n_mix, z.shape[-1], gen)
            inside = z[:n_mix]
            # Edited latents are not the encoder's: some insides get a random gain (up to the
            # edits' larger magnitudes) and no pixel target; the outside must come out the same.
            off = (torch.rand(n_mix, 1, 1, 1, generator=gen) < args.composite_perturb).float()
            inside = inside * (1 + off * 0.6 * torch.rand(n_mix, 1, 1, 1, generator=gen))
            z = torch.cat([join(inside, z.roll(1, 0)[:n_mix], m_lat), z[n_mix:]])
            x = torch.cat([join(x[:n_mix], x.roll(1, 0)[:n_mix], m_pix), x[n_mix:]])
            weight[:n_mix] = 1 - off * m_pix
            if args.composite_seam_weight:  # where the edits' remaining error is
                weight[:n_mix] *= 1 + args.composite_seam_weight * outer_ring(m_pix, 2)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        err = (rec - x).abs() + (rec - x) ** 2  # L1 + MSE where the target is known
        loss = (err * weight).sum() / (weight.sum() * x.shape[1]) + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        minutes = (time.time() - t0) / 60
        done = minutes >= args.max_minutes or bool(STOP)
        if step % 50 == 0:
            log(f"vae step {step} loss {np.mean(losses[-50:]):.4f} {(time.time() - t0) / max(1, len(losses)):.2f}s/step")
        if time.time() - last_eval > 120 or done:
            last_eval = time.time()
            with torch.no_grad():
                vae.eval()
                p = torch.cat([psnr(vae(held[i:i + 32]).sample, held[i:i + 32]) for i in range(0, len(held), 32)])
                z_held = vae.encode(held).latent_dist.mode()
                pc = psnr(vae.decode(join(z_held[:64], z_held[64:], held_masks[0])).sample, held_joined)
                vae.train()
            history.append(dict(step=step, loss=float(np.mean(losses[-50:])), psnr=float(p.mean()),
                                psnr_min=float(p.min()), composite_psnr=float(pc.mean()), minutes=minutes))
            log(f"vae eval step {step}: held-out PSNR {p.mean():.2f} dB (min {p.min():.2f}), "
                f"joined latents {pc.mean():.2f} dB")
            if p.mean() >= args.target_psnr:
                done = True
        if time.time() - last_ck > 300 or done:
            last_ck = time.time()
            atomic_save(dict(model=vae.state_dict(), opt=opt.state_dict(), step=step, history=history,
                             decoder_only=args.decoder_only, torch_rng=torch.get_rng_state(), wall_s=wall0 + time.time() - t0), ck)
        if done:
            break
    log(f"VAE done at step {step}")


def rectangle_masks(n: int, latent_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random rectangles on the latent grid (2 to 10 cells a side), as (n,1,h,w) latent masks and
    the same masks at pixel resolution (×4). Editing joins latents this way (IRJS keeps the source
    latent outside the regions); a decoder trained on such joins decodes each side as its own
    pixels instead of bleeding one into the other across the seam."""
    m = torch.zeros(n, 1, latent_size, latent_size)
    for i in range(n):
        h, w = (int(v) for v in torch.randint(2, 11, (2,), generator=gen))
        y, x = int(torch.randint(0, latent_size - h + 1, (1,), generator=gen)), int(torch.randint(0, latent_size - w + 1, (1,), generator=gen))
        m[i, 0, y:y + h, x:x + w] = 1
    factor = world.SIZE // latent_size
    return m, m.repeat_interleave(factor, 2).repeat_interleave(factor, 3)


def outer_ring(mask: torch.Tensor, width: int) -> torch.Tensor:
    """(n,1,H,W) 1.0 on the pixels outside `mask` within `width` px (Chebyshev) of it."""
    return F.max_pool2d(mask, 2 * width + 1, stride=1, padding=width) - mask


def join(inside: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return mask * inside + (1 - mask) * outside


def load_vae(work: Path):
    vae = build_vae()
    s = torch.load(Path(work) / "vae.pt", weights_only=False)
    vae.load_state_dict(s["model"])
    vae.eval().requires_grad_(False)
    return vae, s


# =============================================================================== data for the UNet

def build_dataset(args: TrainSettings, vae, tokenizer) -> dict:
    """Pre-encode N training images once: posterior moments, token ids, per-object token indices
    and 8×8 coverage masks (for the attention loss). Cached in --work, keyed by seed and N."""
    path = Path(args.work) / f"unet_data_s{args.seed}_n{args.n_images}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    log(f"building dataset of {args.n_images} images")
    n, cell = args.n_images, 8
    moments = torch.empty(n, 8, 16, 16, dtype=torch.float16)
    ids = torch.empty(n, MAX_LENGTH, dtype=torch.long)
    obj_tok = torch.full((n, 3, 2), -1, dtype=torch.long)
    obj_cov = torch.zeros(n, 3, 64 // cell, 64 // cell, dtype=torch.float16)
    bs = 128
    for start in range(0, n, bs):
        samples = [world.make_image(args.seed, i) for i in range(start, min(n, start + bs))]
        x = world.to_tensor(np.stack([s.image for s in samples]))
        with torch.no_grad():
            moments[start:start + len(samples)] = vae.encode(x).latent_dist.parameters.half()
        tok = tokenizer([s.caption for s in samples], padding="max_length", max_length=MAX_LENGTH,
                        truncation=True, return_tensors="pt").input_ids
        ids[start:start + len(samples)] = tok
        for k, s in enumerate(samples):
            words = tokenizer.convert_ids_to_tokens(tok[k].tolist())
            for j, sh in enumerate(s.shapes):
                c = words.index(sh.color + "</w>")
                assert words[c + 1] == sh.shape + "</w>"
                obj_tok[start + k, j] = torch.tensor([c, c + 1])
                m = s.masks[j, 0].reshape(64 // cell, cell, 64 // cell, cell).mean((1, 3))
                obj_cov[start + k, j] = torch.from_numpy(m)
        if start % 2048 == 0:
            log(f"  encoded {start + len(samples)}/{n}")
    std = torch.cat([_sample(moments[i:i + 1024].float(), torch.Generator().manual_seed(i)) for i in range(0, n, 1024)]).std()
    data = dict(moments=moments, ids=ids, obj_tok=obj_tok, obj_cov=obj_cov, scaling_factor=float(1.0 / std))
    atomic_save(data, path)
    log(f"dataset ready; latent std {std:.4f} → scaling_factor {1 / std:.4f}")
    return data


def _sample(moments: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30, 20))
    return mean + std * torch.randn(mean.shape, generator=gen)


# =============================================================================== UNet + text encoder

def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG)
    return CLIPTextModel(cfg)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def attention_loss(maps: torch.Tensor, obj_tok: torch.Tensor, obj_cov: torch.Tensor, keep: torch.Tensor):
    """1 − fraction of each object word's spatial attention that falls on its object.

    maps (B, 64, L); obj_tok (B, 3, 2) token indices (−1: no object); obj_cov (B, 3, 8, 8)."""
    valid = (obj_tok[..., 0] >= 0) & keep[:, None]  # (B,3)
    if not valid.any():
        return maps.sum() * 0
    b_idx, o_idx = valid.nonzero(as_tuple=True)
    toks = obj_tok[b_idx, o_idx]  # (K,2)
    a = torch.stack([maps[b_idx, :, toks[:, 0]], maps[b_idx, :, toks[:, 1]]], 1)  # (K,2,64): colour, shape
    p = a / a.sum(-1, keepdim=True).clamp_min(1e-8)
    cov = obj_cov[b_idx, o_idx].flatten(1).float()[:, None]  # (K,1,64)
    return (1 - (p * cov).sum(-1)).mean()


def token_attention_loss(maps: torch.Tensor, ids: torch.Tensor, eos_id: int, obj_tok: torch.Tensor,
                         obj_cov: torch.Tensor, keep: torch.Tensor):
    """1 − the object's colour+shape share of the prompt tokens' attention on the cells it covers.

    What RAD reads at a cell is a softmax over the prompt's tokens: for it to see the object, the
    object's own words must out-weigh the other prompt words (the background name, "background")
    where the object is. The spatial term above localises each word's map but leaves its share
    tiny (1–3 % against 10–20 % for the background words at the object's cells). SOT and EOT /
    padding are left out of the share, so the model may keep using them as a sink.
    maps (B, 64, L); ids (B, L); cells count when the object covers ≥ half of them."""
    valid = (obj_tok[..., 0] >= 0) & keep[:, None]
    if not valid.any():
        return maps.sum() * 0
    pos = torch.arange(maps.shape[-1])
    first_eos = (ids == eos_id).int().argmax(1)
    prompt = ((pos[None] >= 1) & (pos[None] < first_eos[:, None])).to(maps.dtype)  # (B,L)
    prompt_mass = (maps * prompt[:, None]).sum(-1)  # (B,64)
    b_idx, o_idx = valid.nonzero(as_tuple=True)
    toks = obj_tok[b_idx, o_idx]
    word = maps[b_idx, :, toks[:, 0]] + maps[b_idx, :, toks[:, 1]]  # (K,64)
    share = word / prompt_mass[b_idx].clamp_min(1e-8)
    cells = (obj_cov[b_idx, o_idx].flatten(1).float() >= 0.5).to(maps.dtype)
    return ((1 - share) * cells).sum() / cells.sum().clamp_min(1)


def _ema_update(ema, model, decay):
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


def train_unet(args):
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    torch.manual_seed(args.seed)
    work = Path(args.work)
    vae, vae_state = load_vae(work)
    save_tokenizer(work / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(work / "tokenizer"))
    data = build_dataset(args, vae, tokenizer)
    del vae
    unet, text = build_unet(), build_text_encoder(tokenizer)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    step, curve, wall0 = 0, [], 0.0
    ck = work / "unet.pt"
    if args.resume and ck.exists():
        s = torch.load(ck, weights_only=False)
        unet.load_state_dict(s["unet"]), text.load_state_dict(s["text"]), opt.load_state_dict(s["opt"])
        ema_unet.load_state_dict(s["ema_unet"]), ema_text.load_state_dict(s["ema_text"])
        step, curve, wall0 = s["step"], s["curve"], s["wall_s"]
        torch.set_rng_state(s["torch_rng"])
        log(f"resumed UNet at step {step}")
    log(f"UNet params {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, "
        f"text encoder {sum(p.numel() for p in text.parameters()) / 1e6:.2f} M")
    store: list = []
    probes = {k: AttentionProbe(store) for k in rad_attention_layers(unet, 4, 8)}
    procs = dict(unet.attn_processors)
    procs.update(probes)
    unet.set_attn_processor(procs)
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset")})
    acp = sched.alphas_cumprod
    empty = tokenizer([""], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    sf = data["scaling_factor"]
    n = len(data["ids"])
    gen = torch.Generator().manual_seed(args.seed * 104729 + step)
    t0 = last_ck = last_export = time.time()
    window = []
    while True:
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        z0 = _sample(data["moments"][idx].float(), gen) * sf
        keep = torch.rand(args.batch, generator=gen) >= args.cfg_drop
        ids = torch.where(keep[:, None], data["ids"][idx], empty)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        lr = args.lr * min(1.0, (step + 1) / 300)
        if args.lr_end is not None:  # anneal over this chunk's wall-clock budget
            frac = min(1.0, (time.time() - t0) / (60 * args.max_minutes))
            lr = args.lr + (args.lr_end - args.lr) * frac
        for g in opt.param_groups:
            g["lr"] = lr
        store.clear()
        pred = unet(zt, t, text(ids).last_hidden_state).sample
        mse = F.mse_loss(pred, noise)
        maps = torch.stack(store).mean(0)
        att = attention_loss(maps, data["obj_tok"][idx], data["obj_cov"][idx], keep)
        loss = mse + args.attn_weight * att
        tok_att = torch.zeros(())
        if args.token_attn_weight:
            tok_att = token_attention_loss(maps, ids, tokenizer.eos_token_id, data["obj_tok"][idx], data["obj_cov"][idx], keep)
            loss = loss + args.token_attn_weight * tok_att
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay), _ema_update(ema_text, text, decay)
        window.append((mse.item(), att.item(), tok_att.item()))
        elapsed = time.time() - t0
        if step % 100 == 0:
            m = np.mean(window, 0)
            curve.append(dict(step=step, mse=float(m[0]), attn=float(m[1]), token_attn=float(m[2]), wall_s=wall0 + elapsed))
            window = []
            log(f"unet step {step} mse {m[0]:.4f} attn {m[1]:.3f} token_attn {m[2]:.3f} lr {lr:.1e}")
        done = elapsed / 60 >= args.max_minutes or bool(STOP)
        export_now = time.time() - last_export > 60 * args.export_every or done
        if time.time() - last_ck > 300 or export_now:
            last_ck = time.time()
            atomic_save(dict(unet=unet.state_dict(), text=text.state_dict(), opt=opt.state_dict(),
                             ema_unet=ema_unet.state_dict(), ema_text=ema_text.state_dict(), step=step,
                             curve=curve, wall_s=wall0 + elapsed, torch_rng=torch.get_rng_state(),
                             scaling_factor=sf), ck)
            log(f"checkpoint at step {step}")
        if export_now:
            last_export = time.time()
            export(args)
        if done:
            break
    log(f"UNet chunk done at step {step}")


# =============================================================================== export

def _thin(curve: list, n: int) -> list:
    """About n evenly spaced points of the loss curve, always ending with the last one."""
    out = curve[:: max(1, len(curve) // n)]
    return out + curve[-1:] if curve and out[-1] is not curve[-1] else out


def _commands(work: Path) -> list[str]:
    p = Path(work) / "commands.log"
    return p.read_text().splitlines() if p.exists() else []


def export(args):
    """Write the complete SD layout (EMA weights) to `out` atomically (tmp folder + rename)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    work, out = Path(args.work), Path(args.out)
    vae, vae_state = load_vae(work)
    tokenizer = CLIPTokenizer.from_pretrained(str(work / "tokenizer"))
    s = torch.load(work / "unet.pt", weights_only=False)
    unet, text = build_unet(), build_text_encoder(tokenizer)
    unet.load_state_dict(s["ema_unet"]), text.load_state_dict(s["ema_text"])
    vae.register_to_config(scaling_factor=s["scaling_factor"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    tmp = new_partial_dir(out)  # private to this run; replaces `out` only once complete
    pipe.save_pretrained(tmp, safe_serialization=True)
    curve = s["curve"]
    info = dict(
        seed=args.seed, unet_steps=s["step"], unet_batch=args.batch, unet_lr=args.lr, unet_lr_end=args.lr_end,
        unet_wall_s=round(s["wall_s"], 1), vae_steps=vae_state["step"], vae_wall_s=round(vae_state.get("wall_s", 0), 1),
        vae_history=vae_state["history"], n_images=args.n_images, cfg_drop=args.cfg_drop,
        attention_loss_weight=args.attn_weight, token_attention_loss_weight=args.token_attn_weight, ema=args.ema, max_length=MAX_LENGTH,
        attention_cell_px=8, image_size=64, vae_scale_factor=4,
        configs=dict(vae=VAE_CONFIG, unet=UNET_CONFIG, text=TEXT_CONFIG, scheduler=SCHEDULER_CONFIG),
        loss_curve=_thin(curve, 60),
        versions=package_versions(),
        commands=_commands(work),
    )
    (tmp / "training.json").write_text(json.dumps(info, indent=1, default=list))
    replace_dir(tmp, out)
    log(f"exported step {s['step']} to {out}")


def export_vae(args):
    """Replace only the VAE of the model in `out` (after a decoder_only chunk: the encoder, hence
    the UNet's latent space and scaling factor, are unchanged) and its VAE fields in training.json."""
    from diffusers import AutoencoderKL

    work, out = Path(args.work), Path(args.out)
    vae, vae_state = load_vae(work)
    old = AutoencoderKL.from_pretrained(out / "vae")
    changed = [k for k, v in old.state_dict().items() if k.startswith(("encoder.", "quant_conv.")) and not torch.equal(v, vae.state_dict()[k])]
    if changed:
        raise ConfigError("out", f"the encoder differs from {out}/vae ({changed[0]} …): the UNet was trained on that "
                                 "encoder's latents, so export the whole model instead (--stage export)")
    vae.register_to_config(scaling_factor=old.config.scaling_factor)
    tmp = new_partial_dir(out / "vae")
    vae.save_pretrained(tmp, safe_serialization=True)
    replace_dir(tmp, out / "vae")
    info = json.loads((out / "training.json").read_text())
    info.update(vae_steps=vae_state["step"], vae_wall_s=round(vae_state.get("wall_s", 0), 1), vae_history=vae_state["history"],
                commands=info.get("commands", []) + [c for c in _commands(work) if c not in info.get("commands", [])])
    with atomic_file(out / "training.json") as tmp_json:
        Path(tmp_json).write_text(json.dumps(info, indent=1, default=list))
    log(f"exported VAE step {vae_state['step']} to {out / 'vae'}")


STAGES = {"vae": train_vae, "unet": train_unet, "export": export, "export_vae": export_vae}


def run_stage(stage: str, settings: TrainSettings, command: str | None = None) -> None:
    """Run one stage (`STAGES`), first noting `command` in `work`/commands.log (the chunks that
    made the model; export writes them into training.json)."""
    if stage not in STAGES:
        raise ConfigError("stage", f"unknown {stage!r}; choose from {', '.join(STAGES)}")
    note_command(settings.work, command)
    STAGES[stage](settings)
