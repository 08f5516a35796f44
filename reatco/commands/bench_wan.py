"""What a ReAtCo edit costs on Wan 2.1 1.3B and 14B: peak memory of every stage and of the whole
81 × 480 × 832 bf16 edit, and its time against plain WanPipeline sampling — estimated on a CPU
(reatco/bench/wan.py, the default) or measured on a device (reatco/bench/wan_measured.py).

    python scripts/bench_wan.py --out bench_wan.json                 # both architectures, CPU, estimated
    python scripts/bench_wan.py --out bench_wan.json --arch 1.3B
    python scripts/bench_wan.py --out smoke.json --smoke             # tiny grids, 1.3B only: minutes
    python scripts/bench_wan.py --out measured.json --device cuda --arch 1.3B --gradient_checkpointing --offload_text_encoder
    python scripts/bench_wan.py --out m.json --measure --arch tiny --frames 5 --height 32 --width 48 --steps 4   # CPU, measured

Measured (`--device cuda`/`cuda:N`, or `--measure` on a CPU): the architecture with random weights
in `--dtype` on the device, one warm-up and one end-to-end run each of plain `WanPipeline`
sampling and a whole `WanReAtCoPipeline` edit (encode, flow inversion, RAD on the first
`--rad_steps` steps + IRJS with two objects' boxes, CFG, decode) of a `--frames` × `--height` ×
`--width` clip: wall seconds and peak memory per stage, edit / plain time against the 1.6× target
and the edit's peak against 24 GB, labelled measured with the device's name.

Random weights at Wan's full width, 2 blocks, a few hundred tokens in float32 on a CPU; memory fitted
per token and scaled to the target clip's 32,760 tokens, the blocks a pass holds and 2 bytes an
element (labelled estimated). The JSON holds the fits (`fits`), the VAE's (`vae`), the weights
(`weights_gb`) and per architecture `estimate.{stage_peak_gb, whole_run_peak_gb,
time_vs_plain_sampling}`; a markdown table is printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below


# reatco.bench.wan_measured's names (repeated so that --help needs no heavy import; a test keeps them equal)
ARCHS = ("1.3B", "14B", "tiny")
TEXT_ENCODERS = ("auto", "umt5-xxl", "small")
TARGET = (81, 480, 832)
TOKEN_PX = 16  # Wan 2.1's token: VAE 8 × patch 2 (the tiny architecture's too)
MEASURED_ONLY = ("frames", "height", "width", "steps", "rad_steps", "warmup_steps", "dtype", "gradient_checkpointing",
                 "offload_text_encoder", "inversion_free", "text_encoder", "seed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--arch", nargs="+", choices=ARCHS,
                   help="estimated: 1.3B and/or 14B (default both); measured: any, tiny for tests (default 1.3B)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--smoke", action="store_true", help="estimated: 1.3B only, 32 and 64 tokens, a 16-px VAE: a few minutes")
    measured = p.add_argument_group("measured mode (--device cuda, or --measure)")
    measured.add_argument("--device", default="cpu", help="cpu (estimated unless --measure) | cuda | cuda:N (measured)")
    measured.add_argument("--measure", action="store_true", help="measure on --device (implied by cuda)")
    measured.add_argument("--frames", type=int, default=None, help=f"clip frames, 4k + 1 (default {TARGET[0]})")
    measured.add_argument("--height", type=int, default=None, help=f"px, a multiple of {TOKEN_PX} (default {TARGET[1]})")
    measured.add_argument("--width", type=int, default=None, help=f"px, a multiple of {TOKEN_PX} (default {TARGET[2]})")
    measured.add_argument("--steps", type=int, default=None, help="sampling steps of both runs (default 50)")
    measured.add_argument("--rad_steps", type=int, default=None, help="RAD on the first N steps (default steps // 2: 25 of 50)")
    measured.add_argument("--warmup_steps", type=int, default=None, help="steps of each warm-up run (default 2)")
    measured.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                          help="weights and activations (default bfloat16 on CUDA, float32 on a CPU)")
    measured.add_argument("--gradient_checkpointing", action="store_true", help="RAD's pass checkpointed per block")
    measured.add_argument("--offload_text_encoder", action="store_true",
                          help="the text encoder leaves the GPU after a run's last prompt is encoded")
    measured.add_argument("--inversion_free", action="store_true",
                          help="the edit starts from the source re-noised with seeded noise instead of its flow inversion")
    measured.add_argument("--text_encoder", choices=TEXT_ENCODERS, default=None,
                          help="umt5-xxl (auto on 1.3B/14B) | small: a 2-layer umT5 of the transformer's text width (auto on tiny)")
    measured.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    args.measure = args.measure or args.device != "cpu"
    if args.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", args.device):
        p.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if not args.measure:
        given = [f"--{name}" for name in MEASURED_ONLY if getattr(args, name) not in (None, False)]
        if given:
            p.error(f"{', '.join(given)} belong to the measured mode: add --device cuda (or --measure on a CPU)")
        if args.arch and "tiny" in args.arch:
            p.error("--arch tiny is for the measured mode (add --measure); the estimate scales the released architectures")
        args.arch = args.arch or ["1.3B", "14B"]
        return args
    if args.smoke:
        p.error("--smoke is the estimated mode's; the measured mode takes --arch tiny and a small --frames/--height/--width")
    args.arch = args.arch or ["1.3B"]
    args.frames, args.height, args.width = (args.frames or TARGET[0]), (args.height or TARGET[1]), (args.width or TARGET[2])
    if args.frames < 1 or (args.frames - 1) % 4:
        p.error(f"--frames must be 4k + 1 (Wan's VAE: 5, 17, 81, ...), got {args.frames}")
    for name in ("height", "width"):
        if getattr(args, name) < TOKEN_PX or getattr(args, name) % TOKEN_PX:
            p.error(f"--{name} must be a positive multiple of {TOKEN_PX} px (one Wan token), got {getattr(args, name)}")
    from reatco.bench.wan_measured import edit_objects

    for obj in edit_objects(args.height, args.width):  # RAD needs each box at least one token a side
        x1, y1, x2, y2 = obj["box"]
        if min(x2 - x1, y2 - y1) < TOKEN_PX:
            p.error(f"--height {args.height} --width {args.width}: the {obj['word']} box {obj['box']} is under one "
                    f"{TOKEN_PX}-px token a side; give at least 32 × 48 px")
    args.steps = 50 if args.steps is None else args.steps
    if args.steps < 1:
        p.error(f"--steps must be ≥ 1, got {args.steps}")
    args.rad_steps = args.steps // 2 if args.rad_steps is None else args.rad_steps
    if not 0 <= args.rad_steps <= args.steps:
        p.error(f"--rad_steps must be between 0 and --steps ({args.steps}), got {args.rad_steps}")
    args.warmup_steps = 2 if args.warmup_steps is None else args.warmup_steps
    if args.warmup_steps < 1:
        p.error(f"--warmup_steps must be ≥ 1, got {args.warmup_steps}")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.offload_text_encoder and args.device == "cpu":
        p.error("--offload_text_encoder moves the text encoder off the GPU: it needs --device cuda")
    args.text_encoder = args.text_encoder or "auto"
    if args.text_encoder == "umt5-xxl" and "tiny" in args.arch:
        p.error("--text_encoder umt5-xxl gives 4096-wide text; --arch tiny reads 32: use small (or auto)")
    args.seed = 0 if args.seed is None else args.seed
    return args


def markdown(report: dict) -> str:
    lines = ["| model | stage peaks (GB): encode / inversion / RAD pass / RAD pass, checkpointed / CFG step / decode "
             "| whole edit, checkpointed (GB) | not checkpointed (GB) | time vs plain sampling: inversion + RAD "
             "(checkpointed) | inversion-free start |", "|---|---|---|---|---|---|"]
    for arch, e in report["estimate"].items():
        p = e["stage_peak_gb"]
        t = e["time_vs_plain_sampling"]
        stages = " / ".join(f"{p[k]:.1f}" for k in ("encode", "inversion_step", "rad_pass", "rad_pass_checkpointed", "cfg_step", "decode"))
        lines.append(f"| Wan 2.1 {arch} | {stages} | {e['whole_run_peak_gb']['checkpointed']:.1f} | "
                     f"{e['whole_run_peak_gb']['not_checkpointed']:.1f} | {t['inversion_checkpointed']:.2f}× "
                     f"({t['inversion']:.2f}× without checkpointing) | {t['inversion_free_checkpointed']:.2f}× |")
    return "\n".join(lines)


def measured_markdown(report: dict) -> str:
    from reatco.bench import wan_measured

    return "\n\n".join(wan_measured.markdown(r) for r in report["runs"])


def measure_main(args) -> int:
    """The measured mode: each --arch built and run on --device (reatco/bench/wan_measured.py)."""
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"error: --device {args.device}: no CUDA device is visible here (torch {torch.__version__}); "
                  "measure on a GPU machine, or use --device cpu --measure", file=sys.stderr)
            return 2
        index = torch.device(args.device).index or 0
        if index >= torch.cuda.device_count():
            print(f"error: --device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)", file=sys.stderr)
            return 2
    from reatco.bench import wan_measured

    report = {"measured": True, "command": " ".join(["python", "scripts/bench_wan.py", *(args.argv or [])]), "runs": []}
    for arch in args.arch:
        settings = wan_measured.MeasureSettings(
            arch=arch, device=args.device, dtype=args.dtype, frames=args.frames, height=args.height, width=args.width,
            steps=args.steps, rad_steps=args.rad_steps, warmup_steps=args.warmup_steps,
            gradient_checkpointing=args.gradient_checkpointing, offload_text_encoder=args.offload_text_encoder,
            inversion=not args.inversion_free, text_encoder=args.text_encoder, seed=args.seed)
        report["runs"].append(wan_measured.measure(settings, log=lambda m: print(m, file=sys.stderr, flush=True)))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after each architecture: partial results survive
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(measured_markdown(report))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.measure:
        return measure_main(args)
    import torch

    from reatco.bench import wan

    torch.set_num_threads(max(1, args.threads))
    archs = ["1.3B"] if args.smoke else args.arch
    grids = ((1, 8, 8), (2, 8, 8)) if args.smoke else ((2, 16, 16), (4, 16, 16))
    vae_sizes = ((5, 16, 16), (5, 32, 32)) if args.smoke else ((5, 32, 32), (5, 64, 64))
    report = {"estimated": True, "target": {"frames": wan.TARGET[0], "height": wan.TARGET[1], "width": wan.TARGET[2],
                                            "dtype": "bfloat16"},
              "weights_gb": wan.weights_gb(), "vae": wan.measure_vae(vae_sizes), "fits": {}, "estimate": {}}
    for arch in archs:
        fit = wan.measure_transformer(arch, grids)
        report["fits"][arch] = asdict(fit)
        report["estimate"][arch] = wan.estimate(fit, report["vae"], report["weights_gb"])
        Path(args.out).write_text(json.dumps(report, indent=2))  # after each architecture: partial results survive
    print(markdown(report))
    return 0


def command() -> int:
    """Entry point of `reatco-bench-wan` and of scripts/bench_wan.py (bad input: exit 2; non-finite: 3)."""
    from reatco.cli import run_main

    return run_main(main, None, "interrupted: --out holds the architectures that finished")


if __name__ == "__main__":  # python -m reatco.commands.bench_wan: this checkout's reatco, from its root
    raise SystemExit(command())
