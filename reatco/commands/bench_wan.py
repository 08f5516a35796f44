"""What a ReAtCo edit costs on Wan 2.1 1.3B and 14B (reatco/bench/wan.py): peak memory of every
stage and of the whole 81 × 480 × 832 bf16 edit, and its time against plain WanPipeline sampling.

    python scripts/bench_wan.py --out bench_wan.json                 # both architectures, CPU, estimated
    python scripts/bench_wan.py --out bench_wan.json --arch 1.3B
    python scripts/bench_wan.py --out smoke.json --smoke             # tiny grids, 1.3B only: minutes

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
import json  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--arch", nargs="+", default=["1.3B", "14B"], choices=["1.3B", "14B"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--smoke", action="store_true", help="1.3B only, 32 and 64 tokens, a 16-px VAE: a few minutes")
    return p.parse_args(argv)


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


def main(argv=None) -> int:
    args = parse_args(argv)
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
    """Entry point of `reatco-bench-wan` and of scripts/bench_wan.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.bench_wan: this checkout's reatco, from its root
    raise SystemExit(command())
