"""docs/images/regions-tracked.png: what a tracker source makes of the shapes demo, drawn the way
scripts/edit.py draws regions.png. No tracker weights exist offline, so the masks come from a
stand-in tracker that returns the demo's exact masks (colour segmentation): the picture shows the
plumbing (a sam2 box on frame 3 → per-frame boxes; a sam3 word → the chosen instance's masks),
not SAM's accuracy.

    python scripts/tracked_regions_picture.py docs/images/regions-tracked.png
"""

from __future__ import annotations

from pathlib import Path



def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="docs/images/regions-tracked.png", help="the PNG to write")
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image

    from reatco.regions.trackers import Tracked, track_source_regions
    from reatco.toy.detector import NAMES, classify_pixels
    from reatco.video import read_video, to_uint8
    from reatco.visualize import regions_sheet

    out = Path(args.output)
    root = Path(__file__).resolve().parent.parent
    frames = to_uint8((read_video(root / "data" / "shapes-demo" / "frames", 64, 64, 8) + 1) / 2)
    colours = np.stack([classify_pixels(f) for f in frames])
    truth = {"circle": colours == NAMES.index("red"), "square": colours == NAMES.index("blue")}

    class StandIn:
        def __call__(self, *args):
            return self

        def track(self, frames, query=None, box=None, point=None, frame=0):
            if query:  # sam3: every instance of the word (one here)
                return Tracked(truth[query][None], np.array([0.9]))
            return Tracked(truth["square"][None], np.array([0.9]))  # sam2: the object under the box

    specs = [{"tracker": "sam3", "query": "circle"}, {"tracker": "sam2", "box": [13, 7, 32, 25], "frame": 3, "region": "boxes"}]
    regions = track_source_regions(frames, specs, make_tracker=StandIn(), whole_cells=4)
    labels = ["sam3 'circle' (mask)", "sam2 box on frame 3 (boxes)"]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(regions_sheet(frames, regions, labels)).save(out)
    print(out)
    return 0


def command() -> int:
    """Entry point of `reatco-tracked-regions-picture` and of scripts/tracked_regions_picture.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.tracked_regions_picture: this checkout's reatco, from its root
    raise SystemExit(command())
