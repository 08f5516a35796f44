"""Peak memory of every stage of an edit, and of the whole run, on SD-1.4's architecture.

A run is a sequence of stages, each with the weights it needs resident: VAE encode of the source,
one-shot tuning (one step's peak), DDIM inversion (one step), RAD passes, CFG denoising steps and
the VAE decode. The largest (resident weights + the stage's own peak) decides whether a clip fits.

Each stage runs alone (`measure_stage`, one fresh process per stage and frame count in
`measure_all`) on random weights, at two frame counts; its own memory — peak minus what was held
before it, i.e. above the weights and inputs (CPU: peak RSS; CUDA: max allocated) — is fitted as
fixed + per_frame × F. Activations grow with the pixels (SDPA, the recorded 77-token maps and
every convolution are linear in the positions) and with the element size, so CPU measurements at
a small size are scaled to 448×768 fp16 by pixels × bytes per element (`estimated: true`); on a
CUDA device at the target size and in fp16 the fit is of measured peaks (`estimated: false`).

What the stages run is the library's own code where it exists (`TuneAVideoBackbone.encode_video`,
`decode_latents`, `RADGuidance.update`, `reatco.backbones.inversion.ddim_inversion`); the tuning step repeats
`reatco.tuning.tune_unet`'s loop body (AdamW on the default trainable modules, autocast in 16-bit
with float32 master weights, gradient checkpointing as on a GPU).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..backbones.tav.backbone import TuneAVideoBackbone
from . import sd14

TARGET_HW = (448, 768)
TARGET_FRAMES = (8, 16, 24, 32)
GPU_BUDGET_MB = 24 * 1024
CUDA_RESERVE_MB = 1024  # CUDA context + allocator slack kept out of the 24 GB
TRAJECTORY_STEPS = 50  # the DDIM inversion trajectory the runner keeps on the device (51 latents)
TRAINABLE_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")  # reatco.config.TuneConfig's default
TOKEN_INDICES = [[2], [5]]  # two words of interest

# stage → which weights it needs (the whole-run model adds them)
STAGES = {
    "encode": "vae",                 # frame by frame (VAE slicing: the runner's default)
    "encode_whole": "vae",           # the whole clip in one batch (before slicing was the default)
    "tune_step": "tune",             # one tuning step, gradient checkpointing, 16-bit autocast
    "inversion_step": "unet",        # one DDIM inversion step (one conditional UNet call)
    "rad_pass": "unet",              # one RAD update: forward to the last recorded layer + backward
    "rad_pass_checkpointed": "unet",  # the same with gradient checkpointing
    "cfg_step": "unet",              # one denoising step: the CFG call (batch 2) + the scheduler step
    "decode": "vae",                 # frame by frame
    "decode_whole": "vae",           # the whole clip in one batch
    "decode_source_stats": "vae",    # irjs.decode_statistics: source, streamed frame by frame
}
# whole-run profiles: the stages a run goes through
PROFILES = {
    "default": ("encode", "tune_step", "inversion_step", "rad_pass", "cfg_step", "decode", "decode_source_stats"),
    "checkpointed": ("encode", "tune_step", "inversion_step", "rad_pass_checkpointed", "cfg_step", "decode", "decode_source_stats"),
    "unsliced": ("encode_whole", "tune_step", "inversion_step", "rad_pass", "cfg_step", "decode_whole"),
}


@dataclass
class Settings:
    device: str = "cpu"
    dtype: str = "auto"  # auto: float16 on CUDA, bfloat16 on a CPU (2 bytes per element, as the target)
    height: int = 256
    width: int = 256
    frames: tuple[int, ...] = (2, 4)
    smoke: bool = False
    threads: int | None = None
    stages: tuple[str, ...] = tuple(STAGES)

    def torch_dtype(self) -> torch.dtype:
        name = self.dtype
        if name == "auto":
            name = "float16" if self.device.startswith("cuda") else "bfloat16"
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# ----------------------------------------------------------------------------- peaks


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(device: str) -> bool:
    """Start a new peak window; True when the peak can be read for this window alone."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return True
    with contextlib.suppress(OSError, AttributeError):  # give freed heap back first
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:  # Linux: resets VmHWM, which ru_maxrss reads
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_mb(device: str) -> float:
    return torch.cuda.memory_allocated() / 2**20 if device.startswith("cuda") else rss_mb()


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- stages


def _latents(n_frames, s: Settings, dtype, g):
    h, w = s.height // 8, s.width // 8
    return torch.randn(1, 4, n_frames, h, w, generator=g).to(s.device, dtype)


def _text(unet, dtype, s: Settings, g, rows=1):
    return torch.randn(rows, 77, unet.config.cross_attention_dim, generator=g).to(s.device, dtype)


def _prepare(stage: str, n_frames: int, s: Settings):
    """Builds what the stage needs (kept out of its peak) and returns the stage as a callable."""
    from diffusers import DDIMScheduler

    dtype = s.torch_dtype()
    g = torch.Generator().manual_seed(1)
    needs = STAGES[stage]
    if needs == "vae":
        vae = sd14.random_vae(s.device, dtype, tiny=s.smoke)
        host = TuneAVideoBackbone(None, vae=vae, device=torch.device(s.device))  # the pipeline's VAE path, bare
        if stage.startswith("encode"):
            video = (torch.rand(n_frames, 3, s.height, s.width, generator=g) * 2 - 1).to(s.device, dtype)
            if stage == "encode":
                vae.enable_slicing()
            return lambda: host.encode_video(video, torch.Generator().manual_seed(0))
        latents, source = _latents(n_frames, s, dtype, g), _latents(n_frames, s, dtype, g)
        if stage != "decode_whole":
            vae.enable_slicing()
        if stage == "decode_source_stats":
            return lambda: host.decode_latents(latents, reference=source)
        return lambda: host.decode_latents(latents)
    if needs == "tune":
        return _tune_step(n_frames, s, g)
    unet = sd14.random_unet(s.device, dtype, tiny=s.smoke)
    scheduler = DDIMScheduler(**sd14.SCHEDULER_CONFIG)
    latents = _latents(n_frames, s, dtype, g)
    if stage == "inversion_step":
        from ..backbones.inversion import ddim_inversion

        cond = _text(unet, dtype, s, g)
        return lambda: ddim_inversion(unet, scheduler, latents, cond, num_steps=1, progress=False)
    if stage == "cfg_step":
        text = _text(unet, dtype, s, g, rows=2)
        scheduler.set_timesteps(50)
        t = scheduler.timesteps[10]

        @torch.no_grad()
        def cfg_step():
            noise = unet(torch.cat([latents, latents]), t, encoder_hidden_states=text).sample
            u, c = noise.chunk(2)
            return scheduler.step(u + 7.5 * (c - u), t, latents).prev_sample

        return cfg_step
    return _rad_pass(unet, latents, n_frames, s, g, checkpointed=stage == "rad_pass_checkpointed")


def _rad_pass(unet, latents, n_frames, s: Settings, g, checkpointed: bool):
    from ..config import RADConfig
    from ..backbones.tav import rad_attention_layers
    from ..rad.guidance import RADGuidance

    cell = 32
    grid = (s.height // cell, s.width // cell)
    masks = torch.zeros(len(TOKEN_INDICES), n_frames, *grid)
    masks[0, :, : max(1, grid[0] // 2), : max(1, grid[1] // 2)] = 1
    masks[1, :, grid[0] // 2 :, grid[1] // 2 :] = 1
    masks = masks.to(s.device)
    cond = _text(unet, latents.dtype, s, g)
    rad = RADConfig(refinement_thresholds={}, gradient_checkpointing=checkpointed)
    layers = rad_attention_layers(unet, 8, cell)
    guidance = RADGuidance(TuneAVideoBackbone(unet), layers, cond, ["a", "b"], TOKEN_INDICES, masks, rad, n_text_tokens=75, num_steps=50)
    t = torch.tensor(500, device=s.device)

    @torch.no_grad()  # as in the pipeline: only the RAD pass enables grad
    def rad_pass():
        with guidance.attached():  # recorder, frozen weights, checkpointing as `rad` asks
            return guidance.update(latents, 1, t, step_size=1.0)[0]

    return rad_pass


def make_tune_step(unet, latents, text, autocast_dtype: torch.dtype | None = None, checkpointing: bool = True):
    """One step of reatco.tuning.tune_unet's loop on `unet` (float32 master weights): the default
    trainable modules, AdamW, 16-bit autocast when `autocast_dtype` is given, gradient
    checkpointing (as both the official configs and ours tune on a GPU). Returns the step."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from ..tuning import select_trainable

    unet.train()
    select_trainable(unet, list(TRAINABLE_MODULES))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-5, weight_decay=1e-2)
    scheduler = DDPMScheduler(**{k: v for k, v in sd14.SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(latents.shape, generator=g).to(latents)
    t = torch.tensor([500], device=latents.device)
    device_type = latents.device.type

    def tune_step():
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            pred = unet(noisy, t, text).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return tune_step


def _tune_step(n_frames, s: Settings, g):
    """The tuning stage: float32 master weights, 16-bit autocast (CUDA: fp16; CPU: bf16)."""
    unet = sd14.random_unet(s.device, torch.float32, tiny=s.smoke)
    autocast_dtype = torch.float16 if s.device.startswith("cuda") else torch.bfloat16
    latents = _latents(n_frames, s, torch.float32, g)
    return make_tune_step(unet, latents, _text(unet, autocast_dtype, s, g), autocast_dtype)


def trainable_parameters(tiny: bool = False) -> int:
    from ..backbones.tav import TuneAVideoUNet
    from ..tuning import select_trainable

    with torch.device("meta"):
        unet = TuneAVideoUNet.from_config(dict(sd14.TINY_UNET_CONFIG if tiny else sd14.UNET_CONFIG))
    select_trainable(unet, list(TRAINABLE_MODULES))
    return sum(p.numel() for p in unet.parameters() if p.requires_grad)


def measure_stage(stage: str, n_frames: int, s: Settings) -> dict:
    """The stage's own peak at n_frames, in this process: peak minus what was held before it."""
    if not s.device.startswith("cuda"):
        from ..threads import set_threads

        set_threads(s.threads)  # 0 / None: the idle cores
    run = _prepare(stage, n_frames, s)
    isolated = reset_peak(s.device)
    base = current_mb(s.device)
    run()
    # The kernel updates its RSS high-water mark lazily, so on CPU it can read below the RSS seen at
    # the window's start or end; the window's peak is at least both.
    peak = max(peak_mb(s.device), base, current_mb(s.device))
    return {"stage": stage, "frames": n_frames, "base_mb": base, "peak_mb": peak, "delta_mb": peak - base, "isolated": isolated}


def _worker_command(stage: str, n_frames: int, s: Settings, out: str) -> list[str]:
    return [sys.executable, "-m", "reatco.bench.memory", json.dumps({**asdict(s), "stage": stage, "n_frames": n_frames, "out": out})]


def measure_all(s: Settings, fresh_process: bool = True, log=print) -> dict:
    """{stage: {frames: measurement}}; each (stage, frame count) in a fresh process unless told."""
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in s.stages:
            for f in s.frames:
                log(f"[bench_memory] {stage} at {f} frames …")
                if fresh_process:
                    out = os.path.join(tmp, f"{stage}-{f}.json")
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
                    subprocess.run(_worker_command(stage, f, s, out), check=True, env=env)
                    row = json.loads(Path(out).read_text())
                else:
                    row = measure_stage(stage, f, s)
                results.setdefault(stage, {})[f] = row
    return results


# ----------------------------------------------------------------------------- model


def linear_fit(points: dict[int, float]) -> tuple[float, float]:
    """(a, b) of y = a + b·F by least squares; one point → through the origin."""
    xs, ys = list(points), list(points.values())
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


@dataclass
class Accounting:
    """What stays resident at the target (fp16 on CUDA), in MB."""

    unet_params: int
    vae_params: int
    text_encoder_params: int
    trainable_params: int
    extras: dict = field(default_factory=dict)

    def resident_mb(self, needs: str, n_frames: int) -> float:
        mb = 2**20
        edit_weights = 2 * (self.unet_params + self.vae_params + self.text_encoder_params) / mb
        trajectory = (TRAJECTORY_STEPS + 1) * 4 * n_frames * (TARGET_HW[0] // 8) * (TARGET_HW[1] // 8) * 2 / mb
        if needs == "tune":
            # float32 master UNet, fp16 VAE and text encoder (tune_unet), and per trainable
            # parameter: float32 gradient + AdamW's two float32 moments + autocast's fp16 copy
            return (4 * self.unet_params + 2 * (self.vae_params + self.text_encoder_params)) / mb + self.tune_state_mb()
        return edit_weights + trajectory

    def tune_state_mb(self) -> float:
        return self.trainable_params * (4 + 8 + 2) / 2**20


def stage_fits(results: dict, s: Settings, accounting: Accounting, measured_on_target: bool) -> dict:
    """Per stage: the measured points, the fit at the measured size, and at the target (MB)."""
    bytes_measured = torch.finfo(s.torch_dtype()).bits // 8
    pixel_scale = (TARGET_HW[0] * TARGET_HW[1]) / (s.height * s.width)
    fits = {}
    for stage, rows in results.items():
        points = {int(f): row["delta_mb"] for f, row in rows.items()}
        param_part = 0.0
        if STAGES[stage] == "tune":
            # the optimizer state and autocast copies are the parameters' size, not the pixels'
            param_part = accounting.tune_state_mb()
        activation_points = {f: v - param_part for f, v in points.items()}
        a, b = linear_fit(activation_points)
        if b < 0:  # memory does not shrink with frames: a flat stage measured with noise, read at its largest point
            a, b = max(activation_points.values()), 0.0
        # the tuning step autocasts to 16 bits whatever the weights, so only the pixels scale it
        elem = 1.0 if STAGES[stage] == "tune" else 2 / bytes_measured
        scale = 1.0 if measured_on_target else pixel_scale * elem
        fits[stage] = {"fixed_mb": a * scale, "per_frame_mb": b * scale, "points_mb": points,
                       "measured_fit": {"fixed_mb": a, "per_frame_mb": b}, "scale": scale,
                       "excluded_parameter_state_mb": param_part}
    return fits


def whole_run(fits: dict, accounting: Accounting, profile: tuple[str, ...], n_frames: int) -> dict:
    peaks = {}
    for stage in profile:
        if stage not in fits:
            continue
        fit = fits[stage]
        own = max(0.0, fit["fixed_mb"] + fit["per_frame_mb"] * n_frames)
        peaks[stage] = accounting.resident_mb(STAGES[stage], n_frames) + own
    limiting = max(peaks, key=peaks.get)
    return {"peak_mb": round(peaks[limiting]), "limiting_stage": limiting, "stages_mb": {k: round(v) for k, v in peaks.items()}}


def max_frames(fits, accounting, profile, limit: int = 4096) -> int:
    budget = GPU_BUDGET_MB - CUDA_RESERVE_MB
    f = 0
    while f < limit and whole_run(fits, accounting, profile, f + 1)["peak_mb"] <= budget:
        f += 1
    return f


def results_from_report(rep: dict) -> tuple[dict, Settings]:
    """The measurements and settings a report was made from (to refit without measuring again)."""
    keep = {k: v for k, v in rep["settings"].items() if k in Settings.__dataclass_fields__}
    keep["frames"], keep["stages"] = tuple(keep["frames"]), tuple(keep["stages"])
    results = {stage: {int(f): row for f, row in rows.items()} for stage, rows in rep["measurements"].items()}
    return results, Settings(**keep)


def report(results: dict, s: Settings) -> dict:
    tiny = s.smoke
    accounting = Accounting(sd14.n_parameters("unet", tiny), sd14.n_parameters("vae", tiny),
                            sd14.n_parameters("text_encoder", tiny), trainable_parameters(tiny))
    measured_on_target = (s.device.startswith("cuda") and (s.height, s.width) == TARGET_HW
                          and s.torch_dtype() == torch.float16 and not s.smoke)
    fits = stage_fits(results, s, accounting, measured_on_target)
    runs = {name: {str(f): whole_run(fits, accounting, profile, f) for f in TARGET_FRAMES} for name, profile in PROFILES.items()}
    maxima = {name: max_frames(fits, accounting, profile) for name, profile in PROFILES.items()}
    how = (f"Each stage's own memory (peak minus what was held before it: {'CUDA max allocated' if s.device.startswith('cuda') else 'peak RSS'}) "
           f"measured at {list(s.frames)} frames, {s.height}×{s.width}, {s.torch_dtype()}, each in a fresh process, fitted as "
           "fixed + per_frame × F" + ("" if measured_on_target else
                                      f", scaled by pixels ({TARGET_HW[0]}×{TARGET_HW[1]} / {s.height}×{s.width}) and element size "
                                      "(to 2 bytes)") +
           " (a negative slope, noise on a stage that does not grow, is read as flat at the largest point)"
           ". The tuning step's parameter state (float32 gradient, AdamW moments and autocast's fp16 copy of each trainable "
           "parameter) is taken out before scaling and added back as resident. Whole run = max over the profile's stages of "
           "(resident weights + the stage's own peak); resident: fp16 UNet, VAE and text encoder and the inversion trajectory "
           "for the edit stages, float32 UNet + fp16 VAE and text encoder + parameter state for tuning. max_frames_24gb keeps "
           f"{CUDA_RESERVE_MB} MB of the 24 GB for the CUDA context and allocator slack.")
    return {
        "settings": {**asdict(s), "dtype": str(s.torch_dtype()).replace("torch.", ""), "target": list(TARGET_HW),
                     "model": "tiny (smoke)" if s.smoke else "SD-1.4 architecture, random weights"},
        "estimated": not measured_on_target,
        "stages": {k: {"fixed_mb": round(v["fixed_mb"], 1), "per_frame_mb": round(v["per_frame_mb"], 1)} for k, v in fits.items()},
        "whole_run": runs["default"],
        "max_frames_24gb": maxima["default"],
        "whole_run_checkpointed": runs["checkpointed"],
        "max_frames_24gb_checkpointed": maxima["checkpointed"],
        "whole_run_unsliced": runs["unsliced"],
        "max_frames_24gb_unsliced": maxima["unsliced"],
        "profiles": {k: list(v) for k, v in PROFILES.items()},
        "accounting": {**asdict(accounting), "edit_weights_mb": round(accounting.resident_mb("unet", 0)),
                       "tune_resident_mb": round(accounting.resident_mb("tune", 0))},
        "fits": fits,
        "measurements": {k: {str(f): row for f, row in v.items()} for k, v in results.items()},
        "how": how,
    }


def markdown(rep: dict) -> str:
    label = "estimated" if rep["estimated"] else "measured"
    lines = [f"Whole run at {rep['settings']['target'][0]}×{rep['settings']['target'][1]} fp16, peak MB ({label}):", "",
             "| frames | default (slicing) | limiting stage | + RAD checkpointing | limiting stage | no slicing | limiting stage |",
             "|---|---|---|---|---|---|---|"]
    for f in map(str, TARGET_FRAMES):
        d, c, u = rep["whole_run"][f], rep["whole_run_checkpointed"][f], rep["whole_run_unsliced"][f]
        lines.append(f"| {f} | {d['peak_mb']:,} | {d['limiting_stage']} | {c['peak_mb']:,} | {c['limiting_stage']} | "
                     f"{u['peak_mb']:,} | {u['limiting_stage']} |")
    lines.append(f"| max in 24 GB | {rep['max_frames_24gb']} | | {rep['max_frames_24gb_checkpointed']} | | "
                 f"{rep['max_frames_24gb_unsliced']} | |")
    lines += ["", "| stage | fixed MB | per frame MB |", "|---|---|---|"]
    for k, v in rep["stages"].items():
        lines.append(f"| {k} | {v['fixed_mb']:,} | {v['per_frame_mb']:,} |")
    return "\n".join(lines)


def _worker_main(spec: str) -> None:
    spec = json.loads(spec)
    out, stage, n_frames = spec.pop("out"), spec.pop("stage"), spec.pop("n_frames")
    spec["frames"], spec["stages"] = tuple(spec["frames"]), tuple(spec["stages"])
    row = measure_stage(stage, n_frames, Settings(**spec))
    Path(out).write_text(json.dumps(row))


if __name__ == "__main__":
    _worker_main(sys.argv[1])
