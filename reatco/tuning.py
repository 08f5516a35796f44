"""One-shot Tune-A-Video tuning of the inflated UNet on the source video (accelerate).

Only the modules named in `trainable_modules` learn (default: the queries of attn1 and attn2 and
all of attn_temp); DDPM noise at random timesteps, epsilon (or v) target, AdamW. The core,
`tune_unet`, takes explicit components, a video tensor and settings; `tune_from_config` adds
loading, the output folder rules and saving.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .backbones.tav import TuneAVideoUNet
from .config import TuneConfig, section_settings
from .environment import package_versions
from .errors import ConfigError, NonFiniteError
from .files import new_partial_dir, remove_quietly, replace_dir
from .tokens import encode_prompt, tokenize_prompt

logger = logging.getLogger(__name__)


# The `tune` fields that say whether and where to tune, not how: they do not decide the weights.
_NOT_TRAINING = ("enabled", "output_dir", "overwrite")


def training_settings(tune: TuneConfig) -> dict:
    """The fields of a `TuneConfig` that decide the tuned weights, as plain values: what the
    cache key and tune_report.json record (the module list as a list)."""
    return {f.name: list(getattr(tune, f.name)) if f.name == "trainable_modules" else getattr(tune, f.name)
            for f in fields(TuneConfig) if f.name not in _NOT_TRAINING}


@dataclass
class TuneResult:
    unet: TuneAVideoUNet
    losses: list[float]
    report: dict = field(default_factory=dict)
    folder: Path | None = None  # where it was saved (tune_from_config)
    reused: bool = False  # found already tuned with this exact setup


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


def encode_frame_by_frame(vae, pixels: torch.Tensor):
    """The VAE posterior of frames (F, 3, H, W), encoded one frame at a time: the encoder's
    activations are one frame's, whatever the clip's length (GroupNorm is per frame, so the
    posterior is the batched one up to float rounding)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.cat([vae.encode(frame).latent_dist.parameters for frame in pixels.split(1)])
    return DiagonalGaussianDistribution(moments)


# ----------------------------------------------------------------------------- core

def tune_unet(components: dict, video: torch.Tensor, prompt: str, settings: Any = None, progress: bool = True) -> TuneResult:
    """Tune `components["unet"]` (2-D: inflated first; a TuneAVideoUNet is tuned in place) on one
    video (F, 3, H, W) in [-1, 1] with its prompt.

        pipe = ReAtCoPipeline.from_pretrained("data/shapes-model")
        video = read_video("data/shapes-demo/frames", height=64, width=64, n_frames=8)
        tune_unet(pipe.components, video, "a red circle and a blue square on a gray background",
                  pipe.model_defaults["tune"])       # or TuneConfig(steps=100, learning_rate=1e-4)
        pipe.unet.save_pretrained("tuned_unet")      # optional: TuneAVideoUNet.from_pretrained reads it

    settings: a `reatco.config.TuneConfig` (the config's `tune` section), a dict of some of its
    fields merged over the defaults, or None (the defaults); checked as a config's `tune` is
    (ConfigError naming e.g. tune.steps).

    components: vae, text_encoder, tokenizer, unet, scheduler (its config gives the DDPM schedule).
    The frozen VAE and text encoder are moved to the training device (and to fp16/bf16 under
    mixed precision). Returns the tuned UNet (fp32, eval, frozen) and the per-step losses."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    s = section_settings("tune", settings)  # a dict: e.g. pipe.model_defaults["tune"]
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
        posterior = encode_frame_by_frame(vae, video.to(device, weight_dtype))
        text = encode_prompt(text_encoder, tokenize_prompt(tokenizer, prompt), device)
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
        if not math.isfinite(losses[-1]):  # a diverged UNet must never be saved or cached
            raise NonFiniteError(f"in the tuning loss at step {len(losses) - 1}", "lower tune.learning_rate or use tune.mixed_precision=no")

    unet = accelerator.unwrap_model(unet, keep_fp32_wrapper=False)
    if use_ckpt:
        unet.disable_gradient_checkpointing()
    unet.requires_grad_(False).eval()
    accelerator.free_memory()
    bad = [n for n, p in unet.named_parameters() if n in set(trainable) and not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(f"in the tuned weights ({bad[0]}{' and others' if len(bad) > 1 else ''})",
                             "lower tune.learning_rate or use tune.mixed_precision=no")
    report = {
        "losses": losses, "seed": s.seed, "settings": training_settings(s),
        "trainable_parameters": sum(p.numel() for n, p in unet.named_parameters() if n in set(trainable)),
        "prompt": prompt, "video_shape": list(video.shape), "device": str(device), "mixed_precision": precision,
        "gradient_checkpointing": use_ckpt, "versions": package_versions(), "wall_time_s": time.perf_counter() - start,
    }
    return TuneResult(unet, losses, report)


# ----------------------------------------------------------------------------- cache and output folder

KEY_FILE = "tune_report.json"  # holds "cache_key": what produced the folder


def cache_root(cfg) -> Path:
    from .fingerprint import default_cache_root

    return Path(cfg.cache_dir) if getattr(cfg, "cache_dir", None) else default_cache_root()


def tune_key_parts(cfg, video: torch.Tensor) -> dict:
    """Everything a tuned UNet depends on: the model's files, the frames as read (content), their
    selection and size, the prompt, every tuning setting (seed included) and the precision."""
    from .fingerprint import MODEL_PARTS, digest_path, digest_tensor

    settings = training_settings(cfg.tune)
    v = cfg.video
    return {
        "kind": "tuned_unet",
        "model": digest_path(cfg.model.pretrained, cache_root(cfg) / "file_hashes.json", only=MODEL_PARTS),
        "video": digest_tensor(video),
        "frames": [v.start_frame, v.frame_stride, v.n_frames],
        "size": [v.height, v.width],
        "prompt": v.prompt,
        "settings": settings,
        "precision": _precision(settings["mixed_precision"], torch.cuda.is_available()),
    }


def tune_cache_key(cfg, video: torch.Tensor) -> tuple[str, dict]:
    from .fingerprint import cache_key

    parts = tune_key_parts(cfg, video)
    return cache_key(**parts), parts


def tuned_unet_dir(cfg, key: str | None = None) -> Path:
    """Where a config's tuned UNet lives: `tune.output_dir`, or the cache folder
    `<cache_dir>/tuned/<key>` named by what produced it."""
    if getattr(cfg.tune, "output_dir", None):
        return Path(cfg.tune.output_dir)
    if key is None:
        raise ValueError("the cache folder of a tuned UNet is named by its key: pass key= (tune_cache_key)")
    return cache_root(cfg) / "tuned" / key


def recorded_key(folder) -> str | None:
    try:
        return json.loads((Path(folder) / KEY_FILE).read_text()).get("cache_key")
    except (OSError, ValueError, AttributeError):
        return None


def check_output_dir(folder, overwrite: bool, key: str | None = None) -> bool:
    """Before tuning: True if `folder` already holds a UNet tuned with exactly this setup (`key`),
    False if it is free (or will be overwritten); ConfigError if it holds something else."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise ConfigError("tune.output_dir", f"{folder} is a file; give a folder")
    if key is not None and recorded_key(folder) == key and not overwrite:
        return True
    if overwrite or not any(folder.iterdir()):
        return False
    if (folder / "config.json").exists():
        what = "a tuned UNet of another setup" if key is not None else "a tuned UNet"
    else:
        what = "files"
    raise ConfigError("tune.output_dir", f"{folder} already holds {what}; set tune.overwrite=true (--overwrite) "
                                         f"or choose another tune.output_dir (or null: the cache keeps one per setup)")


def load_tuned(folder, torch_dtype=None, field: str = "model.tuned_unet") -> TuneAVideoUNet:
    """A tuned UNet folder; a damaged or truncated one is a ConfigError naming its path."""
    from .backbones.tav.checkpoint import CheckpointError

    try:
        return TuneAVideoUNet.from_pretrained(folder, torch_dtype=torch_dtype)
    except (CheckpointError, OSError, ValueError, RuntimeError) as err:
        raise ConfigError(field, f"cannot load the UNet in {folder}: {err}") from err


def load_cached_tuned(folder, key: str, torch_dtype=None) -> TuneAVideoUNet | None:
    """The UNet in `folder` if it was tuned with this exact setup and loads; a damaged one is
    reported with its path and removed (the caller tunes again)."""
    folder = Path(folder)
    if recorded_key(folder) != key:
        return None
    try:
        return load_tuned(folder, torch_dtype, field="tune")
    except ConfigError as err:
        logger.warning("the cached tuned UNet in %s is damaged (%s); tuning again", folder, err.message)
        remove_quietly(folder)
        return None


def save_tuned(unet: TuneAVideoUNet, folder, report: dict, cfg=None, overwrite: bool = False, safe_serialization: bool = False) -> Path:
    """Tune-A-Video UNet + `tune_config.yaml` (resolved config, when given) + `tune_report.json`,
    written to a temp folder private to this run and renamed into place, so a folder that exists
    is complete."""
    folder = Path(folder)
    if check_output_dir(folder, overwrite, report.get("cache_key")) and not overwrite:
        return folder  # another run finished the same tuning meanwhile
    tmp = new_partial_dir(folder)
    try:
        unet.save_pretrained(tmp, safe_serialization=safe_serialization)
        if cfg is not None:
            from .config_files import save_config

            save_config(cfg, tmp / "tune_config.yaml")
        (tmp / KEY_FILE).write_text(json.dumps(report, indent=2) + "\n")
        replace_dir(tmp, folder)
    except BaseException:
        remove_quietly(tmp)
        raise
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


def tune_from_config(cfg, video: torch.Tensor | None = None, progress: bool = True, components: dict | None = None,
                     key: str | None = None, parts: dict | None = None) -> TuneResult:
    """Tune as `cfg` says and write the result to `tuned_unet_dir(cfg, key)`. A folder that holds
    a UNet of this exact setup is reused (result.losses empty, result.report its report); one of
    another setup is refused unless `tune.overwrite`. Two runs of one setup take turns: the
    second waits and reuses the first's result."""
    from .files import file_lock

    if video is None:
        from .video import read_video

        v = cfg.video
        video = read_video(v.path, v.height, v.width, n_frames=v.n_frames, start_frame=v.start_frame, frame_stride=v.frame_stride)
    if key is None:
        key, parts = tune_cache_key(cfg, video)
    folder = tuned_unet_dir(cfg, key)
    overwrite = bool(getattr(cfg.tune, "overwrite", False))
    check_output_dir(folder, overwrite, key)  # before anything expensive
    # not replace_dir's lock (lock_path(folder)): save_tuned takes that one inside
    with file_lock(folder.parent / f".{folder.name}.tune.lock", "tuning the same UNet"):
        if not overwrite:
            unet = load_cached_tuned(folder, key)
            if unet is not None:
                logger.info("reusing the UNet tuned with this exact setup in %s", folder)
                report = json.loads((folder / KEY_FILE).read_text())
                return TuneResult(unet, [], report, folder=folder, reused=True)
        components = components or load_components(cfg.model.pretrained)
        result = tune_unet(components, video, cfg.video.prompt, cfg.tune, progress=progress)
        result.report.update(pretrained=str(cfg.model.pretrained), cache_key=key, cache_key_parts=parts)
        save_tuned(result.unet, folder, result.report, cfg=cfg, overwrite=overwrite)
    logger.info("tuned UNet written to %s", folder)
    result.folder = folder
    return result
