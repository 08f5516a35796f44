"""How well `source: {word: …}` (the attention finder, reatco/regions/finding.py) finds the objects
of shapes-world clips: per object and per frame, the IoU of the found box (the object's own extent,
before the edit rounds it out to latent cells) with the exact truth.

    python scripts/measure_found_regions.py                    # the demo clip
    python scripts/measure_found_regions.py --families base cross three fast border long --clips 4
    python scripts/measure_found_regions.py --spec '{"colour_weight": 0}'   # settings of source:
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "data" / "shapes-model"))
    parser.add_argument("--families", nargs="*", default=[], help="shapes-world case families (reatco/toy/families.py)")
    parser.add_argument("--clips", type=int, default=4, help="clips per family")
    parser.add_argument("--seed", type=int, default=9_000_017, help="the families' seed (no setting was chosen on it)")
    parser.add_argument("--spec", default="{}", help="JSON settings of the source: region (threshold, similarity, …)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from reatco.pipeline import ReAtCoPipeline
    from reatco.regions.finding import box_iou, find_source_regions
    from reatco.toy import world
    from reatco.toy.families import make_case
    from reatco.video import read_video

    torch.set_num_threads(1)
    pipe = ReAtCoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    spec = json.loads(args.spec)
    truth = json.loads((ROOT / "data" / "shapes-demo" / "truth.json").read_text())
    clips = [("demo", read_video(ROOT / "data" / "shapes-demo" / "frames", 64, 64, 8), truth["caption"],
              truth["objects"], np.array([truth["boxes"][w] for w in truth["objects"]]))]
    for family in args.families:
        for i in range(args.clips):
            source = make_case(family, args.seed, 50_000 + i, n_frames=8).source
            clips.append((f"{family}{i}", world.to_tensor(source.frames), source.caption,
                          [s.phrase for s in source.shapes], source.boxes))
    per_family: dict[str, list[float]] = {}
    for name, video, caption, words, boxes in clips:
        with torch.no_grad():
            latents = pipe.encode_video(video, torch.Generator().manual_seed(33))
        found = find_source_regions(pipe, video, latents, caption, [dict(spec, word=w) for w in words], rad_cell_px=8)
        for j, (word, region) in enumerate(zip(words, found)):
            ious = [box_iou(region.boxes[f].numpy(), boxes[j][f].astype(float)) for f in range(len(video))]
            per_family.setdefault(name.rstrip("0123456789"), []).append(float(np.mean(ious)))
            print(f"{name:10s} {word:18s} mean {np.mean(ious):.3f}  per frame {' '.join(f'{v:.2f}' for v in ious)}")
    for family, values in per_family.items():
        print(f"{family}: mean IoU {np.mean(values):.3f} over {len(values)} objects")
    return 0


def command() -> int:
    """Entry point of `reatco-measure-found-regions` and of scripts/measure_found_regions.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.measure_found_regions: this checkout's reatco, from its root
    raise SystemExit(command())
