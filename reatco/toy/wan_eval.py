"""The shapes-world Wan model's own gates, readable on any checkpoint while it trains
(`scripts/train_shapes_model.py --backbone wan --stage eval`), on the shapes bench's held-out
seeds (`reatco.bench.shapes_model.BENCH_OFFSET`: neither training nor training's held-out set):

  vae          PSNR of encode → decode on held-out 9-frame clips (uint8 frames; gate ≥ 30 dB)
  text2video   WanPipeline samples (9 frames) for the bench's held-out captions; the detector
               checks every requested colour with its shape in each frame (gate ≥ 90 % of frames)
  attention    each object word's attn2 map on the recorded blocks (renormalised over the prompt's
               real tokens, as the editing pipeline reads it; `raw_mass_in_box`: the softmax as
               is, padding included), per latent frame normalised over the frame's cells: its
               mass in the object's box (the union of the latent frame's pixel-frame boxes), on
               held-out two-object clips noised to σ = 0.5 (gate ≥ 0.8; also σ = 0.25 and 0.75,
               and the box's share of the frame = chance)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..bench.shapes_model import BENCH_OFFSET, check_sample, heldout_prompts
from ..errors import ConfigError
from ..metrics.fidelity import image_psnr
from . import wan_model as wm
from .training import log

SIGMAS = (0.25, 0.5, 0.75)


def vae_psnr(vae, clips: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Per-clip PSNR (dB) of encode → mode → decode, on uint8-rounded frames as they are saved
    (the shapes bench's VAE gate)."""
    vals = []
    with torch.no_grad():
        for i in range(0, len(clips), batch):
            x = clips[i:i + batch]
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            a, b = ((x + 1) * 127.5).round(), ((rec + 1) * 127.5).round()
            # frames as images: (B·F, 3, H, W), then the mean over each clip's frames
            per_frame = image_psnr(a.transpose(1, 2).flatten(0, 1), b.transpose(1, 2).flatten(0, 1), 255.0)
            vals.append(per_frame.view(len(x), -1).mean(1))
    return torch.cat(vals)


def load_vae(work: Path, decoder: bool = True):
    """The VAE's EMA weights from `work`/vae.pt (eval mode, frozen) and the checkpoint's state;
    with `decoder`, the fine-tuned decoder's EMA from `work`/decoder.pt where it exists (its
    encoder is vae.pt's, frozen: the same latents), its state under "decoder_state"."""
    s = torch.load(Path(work) / "vae.pt", weights_only=False)
    vae = wm.build_vae(s["config"])
    vae.load_state_dict(s["ema"])
    path = Path(work) / "decoder.pt"
    if decoder and path.exists():
        d = torch.load(path, weights_only=False)
        vae.load_state_dict(d["ema"])
        s["decoder_state"] = d["state"]
    return vae.eval().requires_grad_(False), s


def load_models(work: Path):
    """(tokenizer, text encoder, vae, transformer, info) from the latest checkpoints: EMA weights,
    the VAE's latents_mean / latents_std from the data set; the attn2 processors are Wan's own."""
    work = Path(work)
    if not (work / "transformer.pt").exists():
        raise ConfigError("work", f"{work}/transformer.pt is missing: train the transformer first")
    vae, vae_ck = load_vae(work)
    s = torch.load(work / "transformer.pt", weights_only=False)
    tokenizer = wm.build_tokenizer()
    text, tr = wm.build_text_encoder(tokenizer), wm.build_transformer(s["config"])
    text.load_state_dict(s["ema_text"]), tr.load_state_dict(s["ema_transformer"])
    stats = sorted(work.glob("wan_data_s*_n*_l*.pt"), key=lambda p: p.stat().st_mtime)
    if stats:
        d = torch.load(stats[-1], weights_only=False)
        vae.register_to_config(latents_mean=d["latents_mean"], latents_std=d["latents_std"])
    return tokenizer, text.eval(), vae, tr.eval(), dict(vae=vae_ck, transformer=s)


def load_pipeline(args):
    """The WanPipeline of `eval_model` (a folder) or of the latest checkpoints in `work`, with the
    attention blocks the model was trained to localise."""
    from diffusers import WanPipeline

    if args.eval_model:
        pipe = WanPipeline.from_pretrained(args.eval_model)
        info = json.loads((Path(args.eval_model) / "training.json").read_text())
        blocks, step = info["attention_blocks"], info["transformer_steps"]
    else:

        tokenizer, text, vae, tr, ck = load_models(args.work)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=tr, scheduler=wm.build_scheduler())
        blocks, step = ck["transformer"]["blocks"], ck["transformer"]["state"]["step"]
    pipe.set_progress_bar_config(disable=True)
    return pipe, blocks, step


def _normalise(pipe, z: torch.Tensor) -> torch.Tensor:
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def vae_gate(pipe, seed: int, n: int) -> dict:

    clips = wm.clip_tensor([wm.make_clip(BENCH_OFFSET + seed, i, 9) for i in range(n)])
    p = vae_psnr(pipe.vae, clips)
    return dict(psnr_mean=float(p.mean()), psnr_min=float(p.min()), n=n, gate=30.0, passed=bool(p.mean() >= 30.0))


def text2video_gate(pipe, seed: int, n: int, steps: int, cfg: float, batch: int = 8, n_frames: int = 9) -> dict:
    samples = heldout_prompts(seed, n)  # the SD model's held-out captions: half one object, half two
    frames_ok, clips_ok, colours_ok, extra = [], [], [], []
    failures = []
    for i in range(0, n, batch):
        chunk = samples[i:i + batch]
        g = [torch.Generator().manual_seed(seed * 1000 + i + k) for k in range(len(chunk))]
        with torch.no_grad():
            videos = pipe([s.caption for s in chunk], height=wm.SIZE, width=wm.SIZE, num_frames=n_frames,
                          num_inference_steps=steps, guidance_scale=cfg, generator=g, output_type="np").frames
        videos = (np.asarray(videos) * 255).round().astype(np.uint8)
        for s, video in zip(chunk, videos):
            rows = [check_sample(frame, s.shapes) for frame in video]
            frames_ok += [r["shapes"] for r in rows]
            colours_ok += [r["colours"] for r in rows]
            extra += [bool(r["extra_colours"]) for r in rows]
            clips_ok.append(all(r["shapes"] for r in rows))
            if not clips_ok[-1] and len(failures) < 10:
                failures.append(s.caption)
    acc = float(np.mean(frames_ok))
    return dict(accuracy=acc, clip_accuracy=float(np.mean(clips_ok)), colours_present=float(np.mean(colours_ok)),
                extra_colour_rate=float(np.mean(extra)), n=n, frames=n_frames, steps=steps, guidance_scale=cfg,
                gate=0.9, passed=bool(acc >= 0.9), failures=failures)


def attention_gate(pipe, blocks: list[int], seed: int, n: int, sigmas=SIGMAS) -> dict:
    samples = [wm.make_clip(BENCH_OFFSET + seed, 20_000 + i, 9, n_objects=2) for i in range(n)]
    captions = [s.caption for s in samples]
    store: list = []
    old = wm.install_recorders(pipe.transformer, blocks, store)
    g = torch.Generator().manual_seed(seed)
    per_sigma = {}
    try:
        with torch.no_grad():
            z = _normalise(pipe, pipe.vae.encode(wm.clip_tensor(samples)).latent_dist.mode())
            emb = pipe.encode_prompt(captions, do_classifier_free_guidance=False, device=torch.device("cpu"))[0]
        for sigma in sigmas:
            with torch.no_grad():
                xt = (1 - sigma) * z + sigma * torch.randn(z.shape, generator=g)
                store.clear()
                pipe.transformer(hidden_states=xt, timestep=torch.full((n,), sigma * 1000), encoder_hidden_states=emb)
            maps = torch.stack(store).mean(0)  # (B, N, L)
            inside, inside_real, chance = [], [], []
            for b, s in enumerate(samples):
                pos = wm.word_positions(pipe.tokenizer, s.caption)
                n_real = len(pipe.tokenizer(s.caption).input_ids)
                # as the editing pipeline reads it: renormalised over the real tokens (</s> included)
                real = maps[b, :, :n_real] / maps[b, :, :n_real].sum(-1, keepdim=True)
                boxes = torch.from_numpy(wm.box_coverage(s.boxes, 9)).float()  # (J, T, 8, 8)
                for j, sh in enumerate(s.shapes):
                    for word in (sh.color, sh.shape):
                        inside += wm.word_box_mass(maps[b], pos[word], boxes[j]).tolist()
                        inside_real += wm.word_box_mass(real, pos[word], boxes[j]).tolist()
                        chance += boxes[j].flatten(1).mean(1).tolist()
            per_sigma[str(sigma)] = dict(mass_in_box=float(np.mean(inside_real)), raw_mass_in_box=float(np.mean(inside)),
                                         box_share=float(np.mean(chance)), ratio=float(np.mean(inside_real) / np.mean(chance)))
    finally:
        pipe.transformer.set_attn_processor(old)
    mid = per_sigma[str(sigmas[len(sigmas) // 2])]
    return dict(**mid, sigma=sigmas[len(sigmas) // 2], per_sigma=per_sigma, blocks=blocks, n=n, gate=0.8,
                passed=bool(mid["mass_in_box"] >= 0.8))


def evaluate_checkpoint(args) -> dict:
    """The three gates on the model; written to `work`/eval-step<N>-seed<S>.json (one file per
    checkpoint and held-out seed: a reading on another seed never replaces one) and returned."""
    t0 = time.time()
    if not args.eval_model and not (Path(args.work) / "transformer.pt").exists():
        return _evaluate_vae_only(args, t0)
    pipe, blocks, step = load_pipeline(args)
    out = dict(transformer_step=step, seed=args.seed)
    decoder_step = (json.loads((Path(args.eval_model) / "training.json").read_text()).get("decoder_steps")
                    if args.eval_model else _decoder_step(args.work))
    if decoder_step is not None:
        out["decoder_step"] = decoder_step
    out["vae"] = vae_gate(pipe, args.seed, args.eval_clips)
    log(f"eval step {step}: VAE {out['vae']['psnr_mean']:.2f} dB")
    out["attention"] = attention_gate(pipe, blocks, args.seed, args.eval_attention_clips)
    log(f"eval step {step}: attention mass in box {out['attention']['mass_in_box']:.3f} (chance {out['attention']['box_share']:.3f})")
    out["text2video"] = text2video_gate(pipe, args.seed, args.eval_samples, args.eval_steps, args.eval_cfg)
    log(f"eval step {step}: text→video {out['text2video']['accuracy']:.3f} of frames right "
        f"({out['text2video']['clip_accuracy']:.3f} of clips)")
    out["wall_s"] = round(time.time() - t0, 1)
    dec = "" if decoder_step is None else f"-decoder{decoder_step}"
    path = Path(args.work) / f"eval-step{step}{dec}-seed{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: (v if not isinstance(v, dict) else {a: b for a, b in v.items() if not isinstance(b, (dict, list))})
                      for k, v in out.items()}, indent=1))
    return out


def _decoder_step(work) -> int | None:
    """The fine-tuned decoder's step in `work`, None without one."""
    path = Path(work) / "decoder.pt"
    return torch.load(path, weights_only=False)["state"]["step"] if path.exists() else None


def _evaluate_vae_only(args, t0: float) -> dict:
    """Before the transformer has a checkpoint: the VAE's gate alone (its EMA weights)."""
    from types import SimpleNamespace


    vae, ck = load_vae(args.work)
    out = dict(transformer_step=None, vae_step=ck["state"]["step"], seed=args.seed)
    dec = ""
    if "decoder_state" in ck:
        out["decoder_step"] = ck["decoder_state"]["step"]
        dec = f"-decoder{out['decoder_step']}"
    out.update(vae=vae_gate(SimpleNamespace(vae=vae), args.seed, args.eval_clips), wall_s=round(time.time() - t0, 1))
    log(f"eval (VAE only, step {out['vae_step']}{dec}): {out['vae']['psnr_mean']:.2f} dB")
    path = Path(args.work) / f"eval-vae-step{out['vae_step']}{dec}-seed{args.seed}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out
