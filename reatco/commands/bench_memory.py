"""Peak memory of every stage of an edit and of the whole run (reatco/bench/memory.py).

    python scripts/bench_memory.py --out bench_memory.json                  # CPU, 256×256, 2 and 4 frames, estimated
    python scripts/bench_memory.py --out bench_memory.json --device cuda --height 448 --width 768 --frames 4 8   # measured
    python scripts/bench_memory.py --out smoke.json --smoke                 # tiny model, seconds (the test suite runs it)

Each stage (encode, tune_step, inversion_step, rad_pass, rad_pass_checkpointed, cfg_step, decode,
decode_source_stats, and the unsliced encode_whole / decode_whole) runs on SD-1.4's architecture
with random weights in a fresh process at each frame count; its own peak is fitted as fixed +
per-frame and extrapolated to 448×768 fp16 for 8, 16, 24 and 32 frames. The JSON holds
`stages.<name>.{fixed_mb, per_frame_mb}`, `whole_run.<frames>.{peak_mb, limiting_stage}`,
`max_frames_24gb` and `estimated`; a markdown table is printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below

from reatco.bench import memory  # noqa: E402


# reatco.bench.memory.STAGES (repeated here so that --help needs no heavy import; a test keeps them equal)
STAGES = ("encode", "encode_whole", "tune_step", "inversion_step", "rad_pass", "rad_pass_checkpointed", "cfg_step",
          "decode", "decode_whole", "decode_source_stats")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="weights and activations (auto: float16 on CUDA, bfloat16 on a CPU)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--frames", type=int, nargs=2, default=[2, 4], metavar=("A", "B"), help="the two frame counts of the fits")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in each worker (0: the idle cores, at least 1)")
    p.add_argument("--refit", metavar="JSON", help="recompute the fits and the whole run from an earlier report's measurements")
    p.add_argument("--smoke", action="store_true", help="tiny model, 64×64, frames 1 and 2, in this process: seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.height, args.width, args.frames = 64, 64, [1, 2]
    if args.height % 32 or args.width % 32:
        p.error("--height and --width must be multiples of 32 (SD's RAD grid)")
    if args.frames[0] == args.frames[1] or min(args.frames) < 1:
        p.error("--frames needs two different positive frame counts")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = memory.Settings(device=args.device, dtype=args.dtype, height=args.height, width=args.width,
                               frames=tuple(sorted(args.frames)), smoke=args.smoke, threads=args.threads, stages=tuple(args.stages))
    start = time.perf_counter()
    if args.refit:
        earlier = json.loads(Path(args.refit).read_text())
        results, settings = memory.results_from_report(earlier)
    else:
        results = memory.measure_all(settings, fresh_process=not args.smoke, log=lambda m: print(m, file=sys.stderr, flush=True))
    report = memory.report(results, settings)
    report["command"] = " ".join(["python", "scripts/bench_memory.py", *(argv if argv is not None else sys.argv[1:])])
    if args.refit:
        report["command"], report["refit_command"] = earlier["command"], report["command"]
        report["wall_sec"], report["cpu_sec"] = earlier.get("wall_sec"), earlier.get("cpu_sec")
    else:
        report["wall_sec"] = round(time.perf_counter() - start, 1)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers' CPU time: the cost on an idle machine
        report["cpu_sec"] = round(children.ru_utime + children.ru_stime + time.process_time(), 1)
    report["markdown"] = memory.markdown(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    print(f"\nwrote {out}", file=sys.stderr)
    return report


def command() -> int:
    """Entry point of `reatco-bench-memory` and of scripts/bench_memory.py."""
    main()
    return 0


if __name__ == "__main__":  # python -m reatco.commands.bench_memory: this checkout's reatco, from its root
    raise SystemExit(command())
