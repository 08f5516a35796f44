"""Quality gates of the shapes-world model and of editing with it (reatco/bench/shapes.py; each
section's measurement is explained in reatco/bench/shapes_model.py and shapes_editing.py).

  vae          reconstruction PSNR on held-out images (gate ≥ 30 dB)
  text2image   DDIM + CFG samples for held-out captions, checked by the detector (gate ≥ 90 %)
  attention    each object word's 8×8 cross-attention mass inside the object's box (vs chance)
  editing      two moving shapes become two other shapes, one region per edited object, with the
               --config's settings: RAD+IRJS, without RAD, without IRJS on the same inversion and
               seed. Placement (gate ≥ 0.9 and a clear margin over without RAD), VISOR relation,
               attention in the regions, invariant-region PSNR (gate ≥ 35 dB with IRJS; the
               source's VAE round trip beside it). --families adds one row per case family of
               reatco/toy/families.py with its gates (placement ≥ 0.95 and ≥ 0.6 above without
               RAD, ≥ 35 dB, stray blobs in ≤ 2 % of the frames).
  regions      regions found from the model's own attention (no coordinates): per-frame box IoU
               (gate ≥ 0.7), and the edit with found regions against true regions (placement
               within 0.05).

  Both backbones: --model data/shapes-wan (a Wan-layout folder; --backbone wan, or read from its
  model_index.json) runs the same sections on the DiT (text→video, attn2 of its trained blocks, 9-frame
  editing cases with configs/shapes-wan.yaml). Every editing run also reports
  temporal smoothness (centroid jitter, region change against the source's own, flicker) and CPU seconds.
  --compare A.json B.json … puts the editing sections of earlier runs side by side (the backbone comparison);
  with --families F, family F's rows of each run (the same cases when one run covered more families).

  python scripts/bench_shapes.py --model data/shapes-model --out outputs/bench_shapes.json
  python scripts/bench_shapes.py --sections editing --families cross,three --edit_cases 4 --threads 1
  python scripts/bench_shapes.py --model data/shapes-wan --sections editing --out outputs/bench_wan.json
  python scripts/bench_shapes.py --compare outputs/bench_unet9.json outputs/bench_wan.json
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep

from pathlib import Path  # noqa: E402

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below

# reatco.bench.shapes.SECTIONS and reatco.toy.families.FAMILIES (repeated here so that --help needs no
# heavy import; a test keeps them equal)
SECTIONS = ("vae", "text2image", "attention", "editing", "regions")
FAMILIES = ("base", "cross", "three", "long", "fast", "border", "box_scale", "keep")


def build_parser() -> argparse.ArgumentParser:
    # the defaults are reatco.bench.shapes.Settings'
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--model", help="the shapes model (default data/shapes-model)")
    p.add_argument("--backbone", choices=("auto", "unet", "wan"),
                   help="the model's backbone (default auto: from its model_index.json)")
    p.add_argument("--compare", nargs="+", metavar="RESULTS_JSON",
                   help="print the editing sections of these earlier results side by side and exit")
    p.add_argument("--out", default="outputs/bench_shapes.json")
    p.add_argument("--n", type=int, help="text→image samples (64)")
    p.add_argument("--n_vae", type=int, help="VAE images (128)")
    p.add_argument("--n_attn", type=int, help="attention images (32)")
    p.add_argument("--seed", type=int, help="held-out seed of every section (0)")
    p.add_argument("--steps", type=int, help="text→image DDIM steps (25)")
    p.add_argument("--cfg", type=float, help="text→image guidance scale (5)")
    p.add_argument("--batch", type=int, help="text→image batch (16)")
    p.add_argument("--threads", type=int, help="torch threads (1)")
    p.add_argument("--sections", help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--save_samples", help="png grid of the first text→image batch")
    p.add_argument("--config", help="editing: the settings to benchmark (configs/shapes.yaml; on Wan configs/shapes-wan.yaml)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="editing: override a config value, e.g. --set rad.step_size=40 (repeatable)")
    p.add_argument("--edit_cases", type=int, help="editing: cases per family (8)")
    p.add_argument("--families", help="editing: comma-separated case families of reatco/toy/families.py ("
                   + ",".join(FAMILIES) + "; default base), each with its own rows")
    p.add_argument("--edit_frames", type=int, help="editing: frames per case (8; on Wan 9: 4k + 1)")
    p.add_argument("--edit_box_grid", type=int,
                   help="editing: round the region boxes out to this many pixels (default: the VAE's latent cell, "
                        "the finest grid IRJS can keep; 1 = the source objects' tight boxes)")
    p.add_argument("--edit_tune_steps", type=int, help="editing: tune for this many steps (0 = no tuning), whatever the config's tune section says")
    p.add_argument("--region_spec",
                   help='regions: the source-region settings as JSON, e.g. \'{"similarity": 0.7}\' (default: the library\'s)')
    p.add_argument("--save_edits", help="folder for source|edit strips of every case and run")
    p.add_argument("--autocast", choices=("none", "bf16"),
                   help="run every section under CPU bfloat16 autocast (weights stay float32; default none)")
    return p


def main(argv=None) -> dict:
    p = build_parser()
    args = vars(p.parse_args(argv))
    out = Path(args.pop("out"))
    if "compare" in args:
        return compare(p, args.pop("compare"), args.get("families"))
    from reatco.bench import shapes
    from reatco.errors import ConfigError
    from reatco.files import atomic_file

    try:
        settings = shapes.Settings(**args)
    except ConfigError as err:
        p.error(f"--{err}")  # before loading anything
    results = shapes.run(settings)
    with atomic_file(out) as tmp:
        Path(tmp).write_text(json.dumps(results, indent=1))
    print(shapes.markdown(results))
    return results


def compare(p: argparse.ArgumentParser, paths: list[str], families: str | None = None) -> dict:
    """--compare: the editing sections of earlier results, side by side, labelled by backbone and file;
    with --families F, family F's rows of each (the same cases when the runs covered other families too)."""
    if families is not None and "," in families:
        p.error(f"--families: --compare takes one family, got {families!r}")
    from reatco.bench import shapes

    results = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            p.error(f"--compare: cannot read {path}: {err}")
        results[f"{data.get('backbone', 'unet') if isinstance(data, dict) else '?'} ({Path(path).name})"] = data
    try:
        print(shapes.compare_markdown(results, families))
    except ValueError as err:
        p.error(f"--compare: {err} (run the bench with --sections editing)")
    return results


def command() -> int:
    """Entry point of `reatco-bench-shapes` and of scripts/bench_shapes.py."""
    main()
    return 0


if __name__ == "__main__":  # python -m reatco.commands.bench_shapes: this checkout's reatco, from its root
    raise SystemExit(command())
