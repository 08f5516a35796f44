"""One-shot Tune-A-Video tuning of the inflated UNet on the source video (accelerate).

Only the modules named in `trainable_modules` learn (default: the queries of attn1 and attn2 and
all of attn_temp); DDPM noise at random timesteps, epsilon (or v) target, AdamW. The core,
`tune_unet`, takes explicit components, a video tensor and settings; `tune_from_config` adds
loading, the output folder rules and saving.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .files import replace_dir
from .models import TuneAVideoUNet

logger = logging.getLogger(__name__)


@dataclass
class TuneSettings:
    """The `tune` section's training fields (any object with these attributes works too)."""

    steps: int = 300
    learning_rate: float = 3e-5
    trainable_modules: Sequence[str] = ("attn1.to_q", "attn2.to_q", "attn_temp")
    seed: int = 33
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16 (auto: fp16 on CUDA; CPU always fp32)
    gradient_checkpointing: bool = True  # on GPU only
    batch_size: int = 1  # copies of the video per step, each with its own noise and timestep
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0

    @classmethod
    def from_config(cls, tune: Any) -> "TuneSettings":
        return cls(**{name: getattr(tune, name) for name in cls.__dataclass_fields__ if getattr(tune, name, None) is not None})


@dataclass
class TuneResult:
    unet: TuneAVideoUNet
    losses: list[float]
    report: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- pieces

def select_trainable(unet: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    """Freeze everything, then unfreeze the parameters of modules whose name ends with a pattern
    (Tune-A-Video's rule: "attn_temp" matches every `...attn_temp` module and all it holds).
    Returns the trainable parameter names; a pattern matching nothing is a ConfigError."""
    unet.requires_grad_(False)
    unused = set(patterns)
    for name, module in unet.named_modules():
        hit = [p for p in patterns if name == p or name.endswith("." + p)]
        if hit:
            unused -= set(hit)
            module.requires_grad_(True)
    if unused:
        raise ConfigError("tune.trainable_modules", f"no module of the UNet ends with {sorted(unused)} "
                                                    f"(e.g. 'attn1.to_q', 'attn2.to_q', 'attn_temp', 'ff')")
    return [n for n, p in unet.named_parameters() if p.requires_grad]


def training_scheduler(scheduler):
    """DDPMScheduler with the model's noise schedule (from a scheduler or its config)."""
    from diffusers import DDPMScheduler

    config = getattr(scheduler, "config", scheduler)
    return DDPMScheduler.from_config(config)


def _precision(requested: str, on_gpu: bool) -> str:
    if requested not in ("auto", "no", "fp16", "bf16"):
        raise ConfigError("tune.mixed_precision", f"must be auto, no, fp16 or bf16, got {requested!r}")
    if not on_gpu:
        if requested in ("fp16", "bf16"):
            logger.warning("mixed precision %s needs a GPU; tuning in fp32 on the CPU", requested)
        return "no"
    return "fp16" if requested == "auto" else requested


def _to(model, device, dtype):
    """Move, and cast only when needed (diffusers warns on every dtype cast)."""
    model = model.to(device)
    return model if model.dtype == dtype else model.to(dtype=dtype)


def _encode_prompt(tokenizer, text_encoder, prompt: str, device) -> torch.Tensor:
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(device))[0]


def _versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import transformers

    from . import __version__

    return {"reatco": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}


# ----------------------------------------------------------------------------- core

def tune_unet(components: dict, video: torch.Tensor, prompt: str, settings: Any = None, progress: bool = True) -> TuneResult:
    """Tune `components["unet"]` (2-D: inflated first; a TuneAVideoUNet is tuned in place) on one
    video (F, 3, H, W) in [-1, 1] with its prompt.

        pipe = ReAtCoPipeline.from_pretrained("data/shapes-model")
        video = read_video("data/shapes-demo/frames", height=64, width=64, n_frames=8)
        tune_unet(pipe.components, video, "a red circle and a blue square on a gray background",
                  pipe.model_defaults["tune"])       # or TuneSettings(steps=100, learning_rate=1e-4)
        pipe.unet.save_pretrained("tuned_unet")      # optional: TuneAVideoUNet.from_pretrained reads it

    settings: a TuneSettings, a dict of its fields, or the config's `tune` section (None: defaults).

    components: vae, text_encoder, tokenizer, unet, scheduler (its config gives the DDPM schedule).
    The frozen VAE and text encoder are moved to the training device (and to fp16/bf16 under
    mixed precision). Returns the tuned UNet (fp32, eval, frozen) and the per-step losses."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if isinstance(settings, dict):  # e.g. pipe.model_defaults["tune"]
        settings = TuneSettings(**settings)
    s = settings if isinstance(settings, TuneSettings) else TuneSettings.from_config(settings) if settings is not None else TuneSettings()
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be (frames, 3, height, width) in [-1, 1], got shape {tuple(video.shape)}")
    start = time.perf_counter()
    on_gpu = torch.cuda.is_available()
    precision = _precision(s.mixed_precision, on_gpu)
    accelerator = Accelerator(mixed_precision=precision, cpu=not on_gpu)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    unet = components["unet"]
    if not isinstance(unet, TuneAVideoUNet):
        unet = TuneAVideoUNet.from_unet2d(unet)  # temporal init from a fixed seed (reset_temporal_parameters)
    unet = _to(unet, device, torch.float32).train()  # trained in fp32; autocast does the mixed part
    trainable = select_trainable(unet, list(s.trainable_modules))
    use_ckpt = bool(s.gradient_checkpointing and on_gpu)
    if use_ckpt:
        unet.enable_gradient_checkpointing()
    vae, text_encoder, tokenizer = components["vae"], components["text_encoder"], components["tokenizer"]
    _to(vae.requires_grad_(False), device, weight_dtype)
    _to(text_encoder.requires_grad_(False), device, weight_dtype)
    scheduler = training_scheduler(components["scheduler"])

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)
    unet, optimizer = accelerator.prepare(unet, optimizer)

    # The video is fixed: encode once, sample the VAE posterior afresh (seeded) at every step.
    generator = torch.Generator().manual_seed(s.seed)  # CPU generator: same draws on any device
    with torch.no_grad():
        posterior = vae.encode(video.to(device, weight_dtype)).latent_dist
        text = _encode_prompt(tokenizer, text_encoder, prompt, device)
    scale = vae.config.scaling_factor
    n_train = scheduler.config.num_train_timesteps
    prediction = scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {prediction!r} (epsilon or v_prediction)")

    losses: list[float] = []
    bar = tqdm(range(s.steps), desc="tuning", disable=not progress or not accelerator.is_local_main_process)
    for _ in bar:
        latents = torch.stack([posterior.sample(generator) for _ in range(s.batch_size)]) * scale  # (B, F, C, h, w)
        latents = latents.transpose(1, 2).float()  # (B, C, F, h, w)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        t = torch.randint(0, n_train, (s.batch_size,), generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if prediction == "epsilon" else scheduler.get_velocity(latents, noise, t)
        pred = unet(noisy, t, text.expand(s.batch_size, -1, -1)).sample
        loss = F.mse_loss(pred.float(), target.float())
        accelerator.backward(loss)
        if accelerator.sync_gradients and s.max_grad_norm:
            accelerator.clip_grad_norm_(params, s.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")

    unet = accelerator.unwrap_model(unet, keep_fp32_wrapper=False)
    if use_ckpt:
        unet.disable_gradient_checkpointing()
    unet.requires_grad_(False).eval()
    accelerator.free_memory()
    report = {
        "losses": losses, "seed": s.seed, "settings": {**asdict(s), "trainable_modules": list(s.trainable_modules)},
        "trainable_parameters": sum(p.numel() for n, p in unet.named_parameters() if n in set(trainable)),
        "prompt": prompt, "video_shape": list(video.shape), "device": str(device), "mixed_precision": precision,
        "gradient_checkpointing": use_ckpt, "versions": _versions(), "wall_time_s": time.perf_counter() - start,
    }
    return TuneResult(unet, losses, report)


# ----------------------------------------------------------------------------- output folder

def tuned_unet_dir(cfg) -> Path:
    """Where a config's tuned UNet lives: `tune.output_dir`, or `<output_dir>/tuned_unet`."""
    return Path(cfg.tune.output_dir) if getattr(cfg.tune, "output_dir", None) else Path(cfg.output_dir) / "tuned_unet"


def check_output_dir(folder, overwrite: bool) -> None:
    """Refuse to replace a finished (or any non-empty) folder unless asked; checked before tuning."""
    folder = Path(folder)
    if overwrite or not folder.exists():
        return
    if folder.is_dir() and not any(folder.iterdir()):
        return
    what = "a tuned UNet" if (folder / "config.json").exists() else "files"
    raise ConfigError("tune.output_dir", f"{folder} already holds {what}; set tune.overwrite=true (--overwrite) "
                                         f"or choose another tune.output_dir")


def save_tuned(unet: TuneAVideoUNet, folder, report: dict, cfg=None, overwrite: bool = False, safe_serialization: bool = False) -> Path:
    """Tune-A-Video UNet + `tune_config.yaml` (resolved config, when given) + `tune_report.json`,
    written to `<folder>.tmp` and renamed into place, so a folder that exists is complete."""
    folder = Path(folder)
    check_output_dir(folder, overwrite)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unet.save_pretrained(tmp, safe_serialization=safe_serialization)
    if cfg is not None:
        from .config import save_config

        save_config(cfg, tmp / "tune_config.yaml")
    (tmp / "tune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    replace_dir(tmp, folder)
    return folder


def load_components(pretrained) -> dict:
    """vae, text_encoder, tokenizer, unet (inflated) and scheduler of an SD-layout model."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel

    from .tokens import load_tokenizer

    pretrained = str(pretrained)
    return dict(
        vae=AutoencoderKL.from_pretrained(pretrained, subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder"),
        tokenizer=load_tokenizer(pretrained),
        unet=TuneAVideoUNet.from_pretrained(pretrained, subfolder="unet"),
        scheduler=DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler"),
    )


def tune_from_config(cfg, video: torch.Tensor | None = None, progress: bool = True, components: dict | None = None) -> TuneResult:
    """Tune as `cfg` says and write the result to `tuned_unet_dir(cfg)` (refusing to overwrite a
    finished one unless `tune.overwrite`)."""
    folder = tuned_unet_dir(cfg)
    overwrite = bool(getattr(cfg.tune, "overwrite", False))
    check_output_dir(folder, overwrite)  # before anything expensive
    if video is None:
        from .video import read_video

        v = cfg.video
        video = read_video(v.path, v.height, v.width, n_frames=v.n_frames, start_frame=v.start_frame, frame_stride=v.frame_stride)
    components = components or load_components(cfg.model.pretrained)
    result = tune_unet(components, video, cfg.video.prompt, cfg.tune, progress=progress)
    result.report["pretrained"] = str(cfg.model.pretrained)
    save_tuned(result.unet, folder, result.report, cfg=cfg, overwrite=overwrite)
    logger.info("tuned UNet written to %s", folder)
    return result
