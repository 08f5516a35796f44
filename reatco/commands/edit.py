"""Edit a video with ReAtCo: tune (Tune-A-Video), invert, edit, and write the edited video with
what explains it (attention maps, regions, resolved config, report).

    python scripts/edit.py --config configs/shapes.yaml
    python scripts/edit.py --config configs/shapes.yaml --set sampling.seed=7 --only triangle-and-circle --overwrite
    python scripts/edit.py --config configs/hares.yaml --dry-run

Each edit goes to <output_dir>/<edit name>/. A finished edit folder is never replaced silently:
rerunning an edit that is already there stops with exit code 2 unless --overwrite is given (then
the new folder replaces the old one only once it is complete).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep


def parse_args(argv=None):
    from reatco.cli import add_run_arguments, config_parser

    parser = config_parser(__doc__, "sampling.seed=7")
    parser.add_argument("--output_dir", default=None, help="write results here instead of the config's output_dir")
    parser.add_argument("--only", default=None, metavar="NAME", help="run only the edit with this name (one of the config's edits[].name)")
    parser.add_argument("--overwrite", action="store_true", help="replace edit folders that are already finished (default: stop)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print token tables, draw regions.png; load no UNet")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def finished_edits(prepared, output_dir) -> list[Path]:
    """The edit folders that already hold a finished edit (report.json is written last)."""
    return [Path(output_dir) / item.edit.name for item in prepared
            if (Path(output_dir) / item.edit.name / "report.json").is_file()]


def main(argv=None) -> int:
    from reatco.cli import run_main

    # finished results are untouched: outputs are written to private temp names and renamed
    return run_main(_main, argv, "interrupted: finished results are kept, this run's temporary files are removed")


def _main(argv=None) -> int:
    args = parse_args(argv)  # before the imports below: --help is instant
    from reatco.cli import start_run
    from reatco.config_files import load_config
    from reatco.errors import ConfigError
    from reatco.backbones import edit_runner

    start_run(args.threads)
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.config, overrides)
    runner = edit_runner(cfg, progress=not args.quiet, overwrite=args.overwrite)  # the config's backbone: the UNet or Wan
    prepared = runner.prepare(only=args.only, dry_run=args.dry_run)
    done = [] if args.overwrite or args.dry_run else finished_edits(prepared, cfg.output_dir)
    if done:
        raise ConfigError("--overwrite", f"{', '.join(str(d) for d in done)} already "
                          f"{'holds a finished edit' if len(done) == 1 else 'hold finished edits'}; pass --overwrite "
                          "to replace, or choose another --output_dir (or --only another edit)")
    if args.dry_run:
        runner.source_video()  # a missing or short video fails here, before any weights load
    else:
        runner.preflight()  # the video, and a tune.output_dir of another setup
    for item in prepared:
        out = Path(cfg.output_dir) / item.edit.name
        print(f"\n[{item.edit.name}] {item.edit.prompt}")
        print(item.token_table)
        for obj, idx in zip(item.edit.objects, item.token_indices):
            # None: a dry run without the model's tokenizer (Wan offline), the table above says what was checked
            print(f"  {obj.word!r} -> token indices {idx}" if idx is not None else
                  f"  {obj.word!r} -> token indices not known (no tokenizer)")
        if args.dry_run:
            # a finished edit's regions.png describes its frames: the dry run draws beside it
            drawing = out.parent / f"{out.name}.dry-run-regions.png" if (out / "report.json").is_file() else out / "regions.png"
            drawing.parent.mkdir(parents=True, exist_ok=True)
            runner.write_regions_png(item, drawing)
            print(f"  regions drawn in {drawing}")
            for obj, region in zip(item.edit.objects, item.regions):
                if region is None:
                    print(f"  {obj.word!r}: region found when the edit runs (from the source video)")
    if args.dry_run:
        return 0
    for item in prepared:  # regions found in the source clip: every edit's, before any edit runs (a bad
        runner.resolve_regions(item)  # source.instance or detector stops here, with nothing written)
    for item in prepared:
        result = runner.run(item)
        print(f"[{item.edit.name}] written to {result.out_dir}")
    return 0


def command() -> int:
    """Entry point of `reatco-edit` and of scripts/edit.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.edit: this checkout's reatco, from its root
    raise SystemExit(command())
