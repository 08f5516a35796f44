"""Write the shapes-world demo clip (data/shapes-demo/) and print its per-frame boxes.

The clip is generated, not recorded, so its ground truth (boxes, masks, background) is exact.
    python scripts/make_shapes_demo.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from reatco.toy.world import Shape, make_video  # noqa: E402
from reatco.video import write_frames, write_video  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="data/shapes-demo")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--n_frames", type=int, default=8)
    args = p.parse_args(argv)
    shapes = [Shape("red", "circle", 11.0), Shape("blue", "square", 11.0)]
    sample = make_video(args.seed, n_frames=args.n_frames, shapes=shapes, background="gray")
    out = Path(args.out)
    write_frames(sample.frames, out / "frames")
    write_video(sample.frames, out / "source.gif", fps=4)
    truth = {
        "caption": sample.caption,
        "objects": [s.phrase for s in sample.shapes],
        "boxes": {s.phrase: sample.boxes[j].tolist() for j, s in enumerate(sample.shapes)},
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(json.dumps(truth))
    return 0


def command() -> int:
    """Entry point of scripts/make_shapes_demo.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.make_shapes_demo: this checkout's reatco, from its root
    raise SystemExit(command())
