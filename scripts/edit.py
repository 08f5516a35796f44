#!/usr/bin/env python
"""Edit a video with ReAtCo: tune (Tune-A-Video), invert, edit, and write the edited video with
what explains it (attention maps, regions, resolved config, report).

    python scripts/edit.py --config configs/dolphins.yaml
    python scripts/edit.py --config configs/shapes.yaml --set sampling.seed=7 --only swap
    python scripts/edit.py --config configs/hares.yaml --dry-run
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reatco.config import load_config  # noqa: E402
from reatco.errors import ConfigError  # noqa: E402
from reatco.runner import EditRunner  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (may inherit from another with base_config:)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. sampling.seed=7 (repeatable: --set a=1 --set b=2, or --set a=1 b=2)")
    parser.add_argument("--output_dir", default=None, help="write results here instead of the config's output_dir")
    parser.add_argument("--only", default=None, metavar="NAME", help="run only the edit with this name")
    parser.add_argument("--dry-run", action="store_true", help="validate, print token tables, draw regions.png; load no UNet")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    try:
        cfg = load_config(args.config, overrides)
        runner = EditRunner(cfg, progress=not args.quiet)
        prepared = runner.prepare(only=args.only)
        runner.source_video()  # a missing or short video fails here, before any weights load
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for item in prepared:
        out = Path(cfg.output_dir) / item.edit.name
        print(f"\n[{item.edit.name}] {item.edit.prompt}")
        print(item.token_table)
        for obj, idx in zip(item.edit.objects, item.token_indices):
            print(f"  {obj.word!r} -> token indices {idx}")
        if args.dry_run:
            out.mkdir(parents=True, exist_ok=True)
            runner.write_regions_png(item, out / "regions.png")
            print(f"  regions drawn in {out / 'regions.png'}")
            for obj, region in zip(item.edit.objects, item.regions):
                if region is None:
                    print(f"  {obj.word!r}: region found when the edit runs (from the source video)")
    if args.dry_run:
        return 0
    try:
        for item in prepared:
            result = runner.run(item)
            print(f"[{item.edit.name}] written to {result.out_dir}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
