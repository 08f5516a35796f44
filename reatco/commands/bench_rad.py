"""Benchmark of the RAD pass: the official strategy against ours (reatco/bench/rad.py).

    python scripts/bench_rad.py --out bench.json                      # SD-1.4 architecture, random weights, CPU
    python scripts/bench_rad.py --out bench.json --device cuda        # on a GPU (peaks = CUDA max allocated)
    python scripts/bench_rad.py --out bench.json --model data/shapes-model --cell-px 8
    python scripts/bench_rad.py --out smoke.json --smoke              # tiny model, seconds (the test suite runs it)

One RAD update in three variants on the same latents, each in its own process: official (explicit
softmax in the recorded layers, the whole forward, parameters requiring grad), fast
(`RADGuidance.update`: early stop, frozen parameters) and fast_ckpt (fast + gradient
checkpointing). Then per denoising step, a whole 50-step edit of a 16-frame clip from the measured
costs under the real schedule (official: 13 windows of 4 frames; ours: the whole clip), and the
largest clip whose pass fits 24 GB at 448×768 fp16. The JSON says how each number was obtained;
a markdown table of the targets is printed.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below


def parse_args(argv=None):
    # the defaults are reatco.bench.rad.Settings'
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--model", help="sd14-random (SD v1.4 architecture, random weights; the default) or a model folder")
    p.add_argument("--frames", type=int, nargs="+", help="frame counts of the measured passes (≥ 2 counts for the fits; 2 4)")
    p.add_argument("--height", type=int, help="(256)")
    p.add_argument("--width", type=int, help="(256)")
    p.add_argument("--steps", type=int, help="denoising steps of the whole edit (50)")
    p.add_argument("--repeats", type=int, help="timed runs after one warm-up (2)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="(float32)")
    p.add_argument("--cell-px", dest="cell_px", type=int, help="image pixels per RAD attention cell (SD: 32)")
    p.add_argument("--clip-frames", dest="clip_frames", type=int, help="frames of the whole edit (16)")
    p.add_argument("--window", type=int, help="official window size (stride --stride; 4)")
    p.add_argument("--stride", type=int, help="(1)")
    p.add_argument("--max-update-steps", dest="max_update_steps", type=int, help="(25)")
    p.add_argument("--tune-steps", dest="tune_steps", type=int, help="our tuning steps (default: reatco's tune.steps default)")
    p.add_argument("--official-tune-steps", dest="official_tune_steps", type=int,
                   help="the official tuning steps (max_train_steps of mdswyz/ReAtCo's configs: 200)")
    p.add_argument("--refinement-iters", dest="refinement_iters", type=int,
                   help="refinement iterations per refinement step (official thresholds {0: 0.05, 10: 0.5, 20: 0.8}; 5)")
    p.add_argument("--isolate", choices=("auto", "always", "never"),
                   help="one fresh process per variant (auto, the default: yes, except --smoke)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default on CPU: 1, see --clock; 0: torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"),
                   help="wall: elapsed time; cpu: process CPU time (default on CPU, with 1 thread: robust on a shared machine)")
    p.add_argument("--smoke", action="store_true", help="tiny model, 64×64, frames 2 3, 1 repeat: seconds")
    return p, p.parse_args(argv)


def main(argv=None) -> dict:
    p, args = parse_args(argv)
    from reatco.bench import rad
    from reatco.errors import ConfigError
    from reatco.files import atomic_file

    options = vars(args)
    out = Path(options.pop("out"))
    try:
        settings = rad.resolve(rad.Settings(**options))
    except ConfigError as err:
        p.error(f"--{err}")
    command = " ".join([os.path.basename(sys.executable), "scripts/bench_rad.py", *(sys.argv[1:] if argv is None else argv)])
    report = rad.run(settings, command)
    with atomic_file(out) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(report["markdown"])
    print(f"\nwrote {out} in {report['wall_sec']:.0f} s", file=sys.stderr)
    return report


def command() -> int:
    """Entry point of `reatco-bench-rad` and of scripts/bench_rad.py."""
    main()
    return 0


if __name__ == "__main__":  # python -m reatco.commands.bench_rad: this checkout's reatco, from its root
    raise SystemExit(command())
