"""One-shot Tune-A-Video tuning of the inflated Stable Diffusion UNet on a config's source video.

    python scripts/tune.py --config configs/dolphins.yaml
    python scripts/tune.py --config configs/hares.yaml --set tune.steps=500 --output_dir outputs/hares_unet --overwrite

Writes the tuned UNet in Tune-A-Video format (config.json, diffusion_pytorch_model.bin) with
tune_config.yaml and tune_report.json to tune.output_dir (default: the cache,
<cache_dir>/tuned/<key>, where scripts/edit.py finds it; the key hashes the model, the frames as
read, the prompt and every tune setting, and a folder tuned with the same key is reused). Load it
with reatco (`model.tuned_unet: <folder>`, `TuneAVideoUNet.from_pretrained(folder)` or
`ReAtCoPipeline.from_pretrained(model, unet=folder)`): its config.json says UNet3DConditionModel,
as the original code expects, but diffusers' own class of that name is another architecture and
refuses it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep


def parse_args(argv=None):
    from reatco.cli import add_run_arguments, config_parser

    parser = config_parser(__doc__, "tune.steps=500")
    parser.add_argument("--output_dir", default=None, help="write the tuned UNet here (sets tune.output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished tuned UNet (sets tune.overwrite)")
    add_run_arguments(parser, progress="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from reatco.cli import run_main

    return run_main(_main, argv, "interrupted: nothing was saved (a finished tuned UNet is never replaced by a partial one)")


def _main(argv=None) -> int:
    args = parse_args(argv)  # before the imports below: --help is instant
    from reatco.cli import start_run
    from reatco.config_files import load_config
    from reatco.tuning import tune_from_config

    start_run(args.threads)
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"tune.output_dir={args.output_dir}")
    if args.overwrite:
        overrides.append("tune.overwrite=true")
    cfg = load_config(args.config, overrides)
    result = tune_from_config(cfg, progress=not args.quiet)
    losses = result.losses
    if result.reused:
        print(f"already tuned with this exact setup: {result.folder} (--overwrite tunes again)")
    else:
        print(f"tuned UNet written to {result.folder} ({len(losses)} steps, final loss {losses[-1]:.4f})")
    return 0


def command() -> int:
    """Entry point of `reatco-tune` and of scripts/tune.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.tune: this checkout's reatco, from its root
    raise SystemExit(command())
