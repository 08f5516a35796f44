"""A browser editor for reatco: open a clip, draw a box per object on keyframes (interpolated in
between) or name the source-prompt word it replaces, preview the regions on every frame, run the
edit, and download the outputs with the YAML config that reruns it from the command line.

    python scripts/app.py                                   # the shapes demo (configs/shapes.yaml)
    python scripts/app.py --config configs/dolphins.yaml --port 7860

Offline: Gradio's own bundled front end, no analytics, no share link, no web fonts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from reatco.config_files import load_config  # noqa: E402
from reatco.errors import ConfigError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"),
                        help="YAML config giving the model and settings (its first edit fills the form)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override config values")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--output_dir", default=None, help="results (and the tuning/inversion caches) go here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else ["output_dir=outputs/app"])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from reatco.app import launch

    launch(cfg, args.host, args.port)
    return 0


def command() -> int:
    """Entry point of `reatco-app` and of scripts/app.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.app: this checkout's reatco, from its root
    raise SystemExit(command())
