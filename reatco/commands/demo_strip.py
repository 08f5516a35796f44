"""Source | edit strip of a finished run, with each object's region drawn on the edited frames
(white, black, … in the config's object order): the picture in the README.

  python scripts/edit.py --config configs/shapes.yaml
  python scripts/demo_strip.py --config configs/shapes.yaml --out docs/shapes-demo.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


from reatco.config_files import load_config  # noqa: E402
from reatco.errors import ConfigError  # noqa: E402
from reatco.regions.region import mask_box  # noqa: E402
from reatco.backbones import edit_runner  # noqa: E402
from reatco.visualize import region_strip  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the config the run was made with")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="the run's overrides, if any")
    p.add_argument("--edit", default=None, help="the edit's name (default: the config's first edit)")
    p.add_argument("--out", required=True, help="png to write")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        runner = edit_runner(cfg, progress=False)  # the config's backbone: the UNet or Wan
        prepared = runner.prepare(args.edit)[0]
        frames_dir = Path(cfg.output_dir) / prepared.edit.name / "frames"
        paths = sorted(frames_dir.glob("*.png"))
        if len(paths) != cfg.video.n_frames:
            raise ConfigError("--config", f"{frames_dir} holds {len(paths)} frames, not video.n_frames = {cfg.video.n_frames}; "
                                          f"run scripts/edit.py --config {args.config} first")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = ((runner.source_video().permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    edited = np.stack([np.asarray(Image.open(q).convert("RGB")) for q in paths])
    boxes = np.stack([r.boxes.numpy() if r.boxes is not None else np.stack([mask_box(m > 0.5) for m in r.pixel_masks.numpy()])
                      for r in prepared.regions])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(region_strip(source, edited, boxes)).save(out)
    print(f"wrote {out}")
    return 0


def command() -> int:
    """Entry point of `reatco-demo-strip` and of scripts/demo_strip.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.demo_strip: this checkout's reatco, from its root
    raise SystemExit(command())
