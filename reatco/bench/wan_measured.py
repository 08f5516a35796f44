"""What a ReAtCo edit costs on Wan 2.1, measured end to end (not estimated): `bench_wan --device cuda`.

The named architecture (Wan 2.1 1.3B or 14B as released, or `tiny` for tests) is built with random
weights in the requested dtype directly on the device — the modules diffusers and transformers keep
in float32 when loading (`_keep_in_fp32_modules`) kept in float32, as `from_pretrained(torch_dtype=…)`
leaves them — with umT5-XXL's architecture as the text encoder (or a small umT5 of the
transformer's text width) and the shapes world's word-level tokenizer (no hub). Random weights cost
what trained ones cost. Then, after a warm-up run of each (a few steps at the same size), one
end-to-end run each of
  * plain: `diffusers.WanPipeline` sampling the clip from noise (CFG, N steps), and
  * edit: `WanReAtCoPipeline` editing a clip of the same size (encode, flow inversion with the
    source prompt, RAD on the first `rad_steps` steps + IRJS with two objects' boxes, CFG, decode),
timed and metered per stage (`StageClock`): wall seconds, synchronised on a GPU, and peak memory —
`torch.cuda.max_memory_allocated` reset at each stage's start on CUDA (what is resident included);
on a CPU the live-tensor meter (`LiveTensorMeter`) plus the weights on the device, from a separate
run (the meter slows the ops it counts, so the CPU's seconds come from a run without it).

Stages: text_encode (every prompt: edit, negative, source), vae_encode, inversion, rad_steps (the
denoising steps with a RAD pass: the pass, its update, IRJS, the CFG calls, the scheduler step),
denoise_steps (the other steps), vae_decode, and other (the rest of the call: tokenising, masks,
post-processing). `offload_text_encoder`: the text encoder leaves the GPU after a run's last prompt
is encoded (the issue allows it); it is back on the device before the next run, outside the timing.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .wan import _COMMON, GB, TARGET, UMT5_XXL, WAN_TRANSFORMERS, WAN_VAE, LiveTensorMeter

TIME_TARGET = 1.6  # a whole edit against plain sampling, end to end (issue 28)
MEMORY_TARGET_GB = 24.0  # a whole 81-frame 480 × 832 edit on Wan 2.1 1.3B (issue 28), in GiB as the estimate counts

# A tiny Wan 2.1-layout transformer for tests (one token = 16 px, as Wan 2.1's), 4 blocks: RAD reads block 1
TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
ARCHS = ("1.3B", "14B", "tiny")
TEXT_ENCODERS = ("auto", "umt5-xxl", "small")

# The clip edited: a shapes-world caption (the word-level tokenizer knows its words), two objects' boxes
SOURCE_PROMPT = "a red circle and a blue square on gray background"
EDIT_PROMPT = "a green triangle and a yellow circle on gray background"
OBJECT_BOXES = {"triangle": (0.05, 0.25, 0.45, 0.75), "circle": (0.55, 0.2, 0.95, 0.8)}  # x1, y1, x2, y2 as fractions


@dataclass
class MeasureSettings:
    arch: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"
    frames: int = TARGET[0]
    height: int = TARGET[1]
    width: int = TARGET[2]
    steps: int = 50
    rad_steps: int = 25
    warmup_steps: int = 2
    guidance_scale: float = 5.0
    gradient_checkpointing: bool = False
    offload_text_encoder: bool = False
    inversion: bool = True  # False: the inversion-free start (the source re-noised with seeded noise)
    text_encoder: str = "auto"
    seed: int = 0


def transformer_config(arch: str) -> dict:
    return dict(TINY_TRANSFORMER) if arch == "tiny" else {**_COMMON, **WAN_TRANSFORMERS[arch]}


def text_encoder_config(arch: str, choice: str = "auto") -> dict:
    """umT5-XXL's architecture (`auto` on the released architectures), or a small umT5 of the
    transformer's text width (2 layers; `auto` on tiny)."""
    width = transformer_config(arch)["text_dim"]
    if choice == "umt5-xxl" or (choice == "auto" and arch != "tiny"):
        if width != UMT5_XXL["d_model"]:
            raise ValueError(f"umT5-XXL gives {UMT5_XXL['d_model']}-wide text; the {arch} transformer reads {width}")
        return dict(UMT5_XXL)
    return dict(d_model=width, d_kv=max(8, width // 4), d_ff=2 * width, num_layers=2, num_heads=4,
                feed_forward_proj="gated-gelu")


@contextlib.contextmanager
def _built_on(device: torch.device, dtype: torch.dtype):
    """Modules constructed inside are allocated on `device` in `dtype` (random init there: no
    float32 copy on the host, 14B's 28 GB bf16 never exist as 56 GB float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _keep_float32(model: torch.nn.Module) -> torch.nn.Module:
    """The parameters of the modules a library keeps in float32 on loading, in float32 (the rule
    of diffusers' and transformers' `from_pretrained(torch_dtype=…)`: a name part in `_keep_in_fp32_modules`)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model


def build_components(settings: MeasureSettings) -> dict:
    """A WanPipeline's components of `settings.arch` with random weights, on the device in the dtype."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from ..toy.wan_model import build_tokenizer

    device, dtype = torch.device(settings.device), getattr(torch, settings.dtype)
    tokenizer = build_tokenizer()
    text_config = text_encoder_config(settings.arch, settings.text_encoder)
    torch.manual_seed(settings.seed)
    with _built_on(device, dtype):
        # the vocabulary is umT5's (its embedding is part of the weights), the ids the word-level tokenizer's
        vocab = max(len(tokenizer), text_config.pop("vocab_size", len(tokenizer)))
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id,
                                                   eos_token_id=tokenizer.eos_token_id, **text_config))
        vae = AutoencoderKLWan(**(TINY_VAE if settings.arch == "tiny" else WAN_VAE))
        transformer = WanTransformer3DModel(**transformer_config(settings.arch))
    # WanPipeline's 480p flow shift (3.0); the edit inverts Euler steps, and plain sampling uses the
    # same scheduler so that both make the same model calls a step
    return dict(tokenizer=tokenizer, text_encoder=_keep_float32(text_encoder).eval(), vae=_keep_float32(vae).eval(),
                transformer=_keep_float32(transformer).eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                transformer_2=None, boundary_ratio=None)


def module_bytes(module: torch.nn.Module, device: torch.device) -> int:
    """Bytes of a module's parameters and buffers on `device`."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == device.type)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Wall seconds and peak memory of the named stages of one run. A stage entered several times
    adds its seconds and keeps its highest peak. Peak memory: on CUDA `max_memory_allocated`, reset
    at each entry (everything allocated counts, the weights too); elsewhere, with a `meter`, the
    meter's peak during the stage (the tensors created since the run began and alive then) plus
    `resident` bytes (the weights on the device, which the meter never sees created)."""

    def __init__(self, device: torch.device, meter: LiveTensorMeter | None = None, resident: int = 0):
        self.device, self.meter, self.resident = device, meter, resident
        self.stages: dict[str, dict] = {}
        self.open: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        if self.open is not None:
            raise RuntimeError(f"stage {name!r} started inside {self.open[0]!r}")
        _synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.meter is not None:
            self.meter.peak = self.meter.current
        self.open = (name, time.perf_counter())

    def stop(self) -> None:
        _synchronize(self.device)
        name, started = self.open
        seconds = time.perf_counter() - started
        peak = None
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.meter is not None:
            peak = self.resident + self.meter.peak
        entry = self.stages.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_gb": None})
        entry["seconds"] += seconds
        entry["calls"] += 1
        if peak is not None:
            entry["peak_gb"] = max(entry["peak_gb"] or 0.0, peak / GB)
        self.open = None

    @contextlib.contextmanager
    def stage(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def timed(self, name: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)
        return run


class _RunProbe:
    """Installs the stage clock on a pipeline for one run: the text encoder's calls (forward
    hooks), the VAE's encode and decode and the pipeline's `invert` (wrapped on the instances), the
    denoising loop from the transformer's first call outside another stage to each step's end (the
    step callback). `rad_step(i)` names a step a RAD step; `offload_after`: the text encoder moves to
    the CPU after that many encodes."""

    def __init__(self, pipe, clock: StageClock, rad_step: Callable[[int], bool], steps: int,
                 offload_after: int | None = None):
        self.pipe, self.clock, self.rad_step, self.steps = pipe, clock, rad_step, steps
        self.offload_after = offload_after
        self.encodes = 0
        self.loop_started = False

    def _step_stage(self, i: int) -> str:
        return "rad_steps" if self.rad_step(i) else "denoise_steps"

    def _text_start(self, module, args):
        self.clock.start("text_encode")

    def _text_end(self, module, args, output):
        self.clock.stop()
        self.encodes += 1
        if self.offload_after is not None and self.encodes == self.offload_after:
            module.to("cpu")  # its output is already on the device; the weights leave it

    def _transformer_start(self, module, args, kwargs):
        if not self.loop_started and self.clock.open is None:  # the loop's first model call (RAD's or CFG's)
            self.loop_started = True
            self.clock.start(self._step_stage(0))

    def step_end(self, pipe, i, t, tensors):
        self.clock.stop()
        if i + 1 < self.steps:
            self.clock.start(self._step_stage(i + 1))
        return {}

    @contextlib.contextmanager
    def installed(self):
        pipe, clock = self.pipe, self.clock
        hooks = [pipe.text_encoder.register_forward_pre_hook(self._text_start),
                 pipe.text_encoder.register_forward_hook(self._text_end),
                 pipe.transformer.register_forward_pre_hook(self._transformer_start, with_kwargs=True)]
        pipe.vae.encode = clock.timed("vae_encode", pipe.vae.encode)
        pipe.vae.decode = clock.timed("vae_decode", pipe.vae.decode)
        if hasattr(pipe, "invert"):
            pipe.invert = clock.timed("inversion", pipe.invert)
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()
            del pipe.vae.encode, pipe.vae.decode  # the class's methods again
            if "invert" in vars(pipe):
                del pipe.invert


def source_clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random clip (F, 3, H, W) in [-1, 1] (its content does not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(-1, 1, width).view(1, 1, 1, width)
    drift = torch.linspace(0, 0.5, frames).view(frames, 1, 1, 1)
    colour = torch.rand(1, 3, 1, 1, generator=g) - 0.5
    return (colour + 0.4 * (xs + drift) * ys).clamp(-1, 1)


def edit_objects(height: int, width: int) -> list[dict]:
    return [{"word": word, "box": [round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)]}
            for word, (x1, y1, x2, y2) in OBJECT_BOXES.items()]


def _plain_run(pipe, settings: MeasureSettings, steps: int, callback=None):
    return pipe(prompt=EDIT_PROMPT, negative_prompt="", height=settings.height,
                                width=settings.width, num_frames=settings.frames, num_inference_steps=steps,
                                guidance_scale=settings.guidance_scale,
                                generator=torch.Generator().manual_seed(settings.seed), output_type="np",
                                callback_on_step_end=callback)


def _edit_run(pipe, settings: MeasureSettings, steps: int, video: torch.Tensor, callback=None):
    rad = {"max_update_steps": min(settings.rad_steps, steps), "gradient_checkpointing": settings.gradient_checkpointing,
           "refinement_thresholds": {}}
    return pipe(EDIT_PROMPT, video=video, objects=edit_objects(settings.height, settings.width),
                source_prompt=SOURCE_PROMPT, num_inference_steps=steps, guidance_scale=settings.guidance_scale,
                generator=torch.Generator().manual_seed(settings.seed), rad=rad, irjs={"enabled": True},
                inversion=settings.inversion,
                output_type="np", callback_on_step_end=callback)


def _prompt_encodes(kind: str, settings: MeasureSettings) -> int:
    """How many prompts a run encodes: the prompt and the negative one (CFG); an edit that inverts
    also the source's."""
    return 3 if kind == "edit" and settings.inversion else 2


def measure_run(pipe, kind: str, settings: MeasureSettings, video: torch.Tensor | None, meter: bool) -> dict:
    """One end-to-end run of `kind` ("plain" | "edit") at `settings.steps`, timed per stage; with
    `meter` (CPU) the live-tensor meter counts its memory."""
    device = torch.device(settings.device)
    text_encoder = pipe.text_encoder
    if settings.offload_text_encoder:
        text_encoder.to(device)  # back from the last run's offload, outside the timing
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    modules = (pipe.transformer, pipe.vae, text_encoder)
    resident = sum(module_bytes(m, device) for m in modules)
    weights = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    live = LiveTensorMeter(known=weights) if meter else None
    clock = StageClock(device, live, resident)
    rad_steps = min(settings.rad_steps, settings.steps) if kind == "edit" else 0
    probe = _RunProbe(pipe, clock, lambda i: i < rad_steps, settings.steps,
                      _prompt_encodes(kind, settings) if settings.offload_text_encoder else None)
    with probe.installed(), live if live is not None else contextlib.nullcontext():
        _synchronize(device)
        started = time.perf_counter()
        if kind == "plain":
            output = _plain_run(pipe, settings, settings.steps, probe.step_end)
        else:
            output = _edit_run(pipe, settings, settings.steps, video, probe.step_end)
        _synchronize(device)
        seconds = time.perf_counter() - started
    frames = output.frames
    if probe.encodes != _prompt_encodes(kind, settings):
        raise RuntimeError(f"the {kind} run encoded {probe.encodes} prompts, not {_prompt_encodes(kind, settings)}")
    del output
    stages = clock.stages
    stages["other"] = {"seconds": max(0.0, seconds - sum(s["seconds"] for s in stages.values())), "calls": 1,
                       "peak_gb": None}
    peaks = [s["peak_gb"] for s in stages.values() if s["peak_gb"] is not None]
    return {"seconds": seconds, "peak_gb": max(peaks) if peaks else None, "stages": stages,
            "frames_shape": list(frames.shape)}


def measure(settings: MeasureSettings, log: Callable[[str], None] = lambda m: None) -> dict:
    """Plain sampling and a whole edit of the same clip on `settings.arch`, measured (module docstring)."""
    from diffusers import WanPipeline

    from ..backbones.wan import WanReAtCoPipeline

    device = torch.device(settings.device)
    log(f"building Wan 2.1 {settings.arch} with random weights on {device} in {settings.dtype}")
    components = build_components(settings)
    pipes = {"plain": WanPipeline(**components), "edit": WanReAtCoPipeline(**components)}  # the same modules
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    weights = {name: module_bytes(components[name], device) / GB for name in ("transformer", "vae", "text_encoder")}
    video = source_clip(settings.frames, settings.height, settings.width, settings.seed)
    warmup = MeasureSettings(**{**asdict(settings), "steps": settings.warmup_steps})
    results = {}
    for kind, pipe in pipes.items():
        if device.type == "cuda":
            log(f"{kind}: warm-up ({settings.warmup_steps} steps)")
            measure_run(pipe, kind, warmup, video, meter=False)
            log(f"{kind}: measured run ({settings.steps} steps)")
            results[kind] = measure_run(pipe, kind, settings, video, meter=False)
        else:  # the metered run is the warm-up; the seconds come from a run without the meter
            log(f"{kind}: memory run ({settings.steps} steps, live-tensor meter)")
            memory = measure_run(pipe, kind, settings, video, meter=True)
            log(f"{kind}: timed run ({settings.steps} steps)")
            results[kind] = timed = measure_run(pipe, kind, settings, video, meter=False)
            for name, stage in timed["stages"].items():
                stage["peak_gb"] = memory["stages"][name]["peak_gb"]
            timed["peak_gb"] = memory["peak_gb"]
        run = results[kind]  # at once, so that a run cut off later still leaves this one's numbers in the log
        log(f"{kind}: {run['seconds']:.2f} s, peak {run['peak_gb']:.3g} GB; " + ", ".join(
            f"{name} {stage['seconds']:.2f} s" for name, stage in run["stages"].items()))
    ratio = results["edit"]["seconds"] / results["plain"]["seconds"]
    # the edit without its inversion stage: what a second edit of the clip costs with the runner's
    # inversion cache (the same model calls but the inversion's; derived from the measured stages)
    inversion = results["edit"]["stages"].get("inversion", {"seconds": 0.0})["seconds"]
    ratio_cached = (results["edit"]["seconds"] - inversion) / results["plain"]["seconds"]
    edit_peak = results["edit"]["peak_gb"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {
        "measured": True, "device": str(device), "device_name": name, "arch": settings.arch, "settings": asdict(settings),
        "memory_counted": ("torch.cuda.max_memory_allocated, reset at each stage" if device.type == "cuda" else
                           "live tensors (LiveTensorMeter) + the weights on the device, from a run of its own"),
        "weights_gb": weights, "plain": results["plain"], "edit": results["edit"],
        "edit_vs_plain_time": ratio, "time_target": TIME_TARGET, "time_target_met": ratio <= TIME_TARGET,
        "edit_without_inversion_vs_plain_time": ratio_cached,
        "edit_peak_gb": edit_peak, "memory_target_gb": MEMORY_TARGET_GB,
        "memory_target_met": edit_peak <= MEMORY_TARGET_GB,
    }


STAGE_ORDER = ("text_encode", "vae_encode", "inversion", "rad_steps", "denoise_steps", "vae_decode", "other")


def markdown(report: dict) -> str:
    """Per stage seconds and peak GB of both runs, the ratio and the peak against the targets."""
    s = report["settings"]
    head = (f"**measured** on {report['device_name']} ({report['device']}): Wan 2.1 {report['arch']}, random weights, "
            f"{s['dtype']}, {s['frames']} × {s['height']} × {s['width']}, {s['steps']} steps (RAD on {s['rad_steps']}), "
            f"CFG {s['guidance_scale']}, {'flow inversion' if s['inversion'] else 'inversion-free start'}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, "
            f"text encoder offloaded after encoding: {'yes' if s['offload_text_encoder'] else 'no'}")
    lines = [head, "", "| stage | plain: s | plain: peak GB | edit: s | edit: peak GB |", "|---|---|---|---|---|"]

    def cell(run, name, key, fmt):
        stage = report[run]["stages"].get(name)
        return "—" if stage is None or stage[key] is None else format(stage[key], fmt)

    for name in STAGE_ORDER:
        if name in report["plain"]["stages"] or name in report["edit"]["stages"]:
            lines.append(f"| {name} | {cell('plain', name, 'seconds', '.2f')} | {cell('plain', name, 'peak_gb', '.3g')} "
                         f"| {cell('edit', name, 'seconds', '.2f')} | {cell('edit', name, 'peak_gb', '.3g')} |")
    lines.append(f"| **whole run** | {report['plain']['seconds']:.2f} | {report['plain']['peak_gb']:.3g} | "
                 f"{report['edit']['seconds']:.2f} | {report['edit']['peak_gb']:.3g} |")
    lines += ["", f"edit / plain time: **{report['edit_vs_plain_time']:.3f}×** (target ≤ {report['time_target']}×: "
                  f"{'met' if report['time_target_met'] else 'not met'}); edit peak: **{report['edit_peak_gb']:.3g} GB** "
                  f"(target ≤ {report['memory_target_gb']:.0f} GB: {'met' if report['memory_target_met'] else 'not met'})"]
    if s["inversion"]:
        lines.append(f"edit without its inversion stage / plain (a cached inversion; derived from the measured stages): "
                     f"{report['edit_without_inversion_vs_plain_time']:.3f}×")
    return "\n".join(lines)
