#!/usr/bin/env python
"""Score (and, where predictions are missing, run) ReAtCo edits on LOVEU-TGVE-2023 and our configs.

    python scripts/eval_loveu.py --data_root data/loveu-tgve-2023 --pred_root outputs/loveu/pred --out outputs/loveu
    accelerate launch --num_processes 8 scripts/eval_loveu.py ... --ablation

Edits are sorted by (subset, video, category, variant); process k of N takes edits[k::N]. Each
finished edit is written atomically to <out>/scores/<subset>__<video>__<category>__<variant>.json
and skipped on restart; the main process merges them into <out>/summary.json and <out>/tables.md.
Bad input exits with code 2 before any model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep

import numpy as np  # noqa: E402

from reatco.cli import run_main  # noqa: E402
from reatco.errors import ConfigError  # noqa: E402
from reatco.files import file_lock, new_partial_dir, remove_quietly, replace_dir  # noqa: E402
from reatco.metrics import evaluate as ev  # noqa: E402
from reatco.metrics.clip_metrics import BACKENDS, DEFAULT_CLIP  # noqa: E402
from reatco.metrics.loveu import CATEGORIES, CSV_NAME, SUBSETS, coverage_report, has_frames, read_loveu_csv  # noqa: E402
from reatco.metrics.pickscore import DEFAULT_PICKSCORE_MODEL, DEFAULT_PICKSCORE_PROCESSOR  # noqa: E402
from reatco.metrics.visor import DEFAULT_OWLVIT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", help="LOVEU-TGVE-2023 root: LOVEU-TGVE-2023_Dataset.csv and <subset>/480p_frames/<video>/*.jpg")
    p.add_argument("--configs", nargs="*", default=[], help="our edit YAMLs (edits with regions: needed by VISOR, PSNR, LPIPS)")
    p.add_argument("--pred_root", help="edited frames, <pred_root>[/<variant>]/<subset>/<video>/<category>/00000.jpg; "
                                       "missing ones are generated there (default: <out>/predictions)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the idle cores, at least 1)")
    p.add_argument("--out", required=True, help="results folder: scores/, summary.json, tables.md")
    p.add_argument("--metrics", default=",".join(ev.METRICS), help=f"comma list from {','.join(ev.METRICS)} (default: all)")
    p.add_argument("--clip_model", default=DEFAULT_CLIP, help="CLIP for text alignment and frame consistency: hub id or "
                                                               "local folder (transformers) or open_clip model name")
    p.add_argument("--clip_backend", default="transformers", choices=BACKENDS, help="CLIP implementation (default: transformers, as LOVEU)")
    p.add_argument("--clip_pretrained", default=None, help="open_clip only: pretrained tag or checkpoint file")
    p.add_argument("--keep_aspect", action="store_true", help="do not resize frames to 480x480 before CLIP/PickScore "
                                                              "(the official evaluator does)")
    p.add_argument("--pickscore_model", default=DEFAULT_PICKSCORE_MODEL, help="PickScore model: hub id or local folder")
    p.add_argument("--pickscore_processor", default=DEFAULT_PICKSCORE_PROCESSOR, help="PickScore processor: hub id or local folder")
    p.add_argument("--owlvit_model", default=DEFAULT_OWLVIT, help="OWL-ViT detector for VISOR: hub id or local folder")
    p.add_argument("--lpips_backbone", default="torchvision", help="LPIPS AlexNet trunk: torchvision (torch hub cache), "
                                                                  "a local alexnet state-dict file, or random (tests)")
    p.add_argument("--subsets", default=",".join(SUBSETS), help=f"LOVEU subsets, comma list from {','.join(SUBSETS)}")
    p.add_argument("--categories", default=",".join(CATEGORIES), help=f"LOVEU edit categories, comma list from {','.join(CATEGORIES)}")
    p.add_argument("--limit", type=int, default=None, help="score only the first N edits of the sorted list (smoke runs)")
    p.add_argument("--ablation", action="store_true", help="Table 2/3 variants baseline (no RAD, no IRJS), rad, irjs, full; "
                                                           "predictions under <pred_root>/<variant>/")
    p.add_argument("--no_run", action="store_true", help="score only: a missing prediction is an error instead of an edit to run")
    p.add_argument("--base_config", default=str(REPO / "configs" / "base.yaml"),
                   help="config the LOVEU edits inherit when they must be run (model, tuning, sampling)")
    p.add_argument("--height", type=int, default=512, help="working height when running LOVEU edits")
    p.add_argument("--width", type=int, default=512, help="working width when running LOVEU edits")
    p.add_argument("--device", default=None, help="device for the metric models (default: this process's accelerate device)")
    return p


# ---------------------------------------------------------------------------- validation (no models)


def collect_edits(args) -> list[ev.EvalEdit]:
    if not args.data_root and not args.configs:
        raise ConfigError("--data_root", "give --data_root (LOVEU-TGVE-2023) and/or --configs")
    variants = tuple(ev.VARIANTS) if args.ablation else (ev.DEFAULT_VARIANT,)
    edits = []
    if args.data_root:
        subsets = ev.parse_choices(args.subsets, SUBSETS, "--subsets")
        categories = ev.parse_choices(args.categories, CATEGORIES, "--categories")
        edits += ev.loveu_edits(args.data_root, subsets, categories, variants)
    for path in args.configs:
        if not Path(path).is_file():
            raise ConfigError("--configs", f"{path} not found")
    if args.configs:
        edits += ev.config_edits(args.configs, variants)
    edits = sorted(edits, key=ev.EvalEdit.sort_key)
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError("--limit", "must be at least 1")
        edits = edits[: args.limit]
    return edits


def check_predictions(args, edits, metrics, settings) -> None:
    """Every edit needs predictions or a way to make them (scores are reused only for the very
    frames they scored, so the frames must be there either way)."""
    missing = [e for e in edits if not has_frames(ev.prediction_folder(args.pred_root, e, args.ablation))]
    if not missing:
        return
    first = ev.prediction_folder(args.pred_root, missing[0], args.ablation)
    if args.no_run:
        raise ConfigError("--pred_root", f"no predicted frames in {first} ({len(missing)} edit(s) missing) and --no_run is set")
    try:
        import reatco.runner  # noqa: F401
    except ImportError as err:
        raise ConfigError("--pred_root", f"no predicted frames in {first} ({len(missing)} edit(s) missing) and the "
                                         f"edit runner cannot be imported ({err}); provide predictions or use --no_run") from err
    if any(e.config is None for e in missing) and not Path(args.base_config).is_file():
        raise ConfigError("--base_config", f"{args.base_config} not found; LOVEU edits without predictions are run with it")


def check_out(out) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError("--out", f"{path} is a file; give a results folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError("--out", f"{path} cannot be created or written ({probe} is not a writable folder)")


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, ./ ../ ~, or more than one '/'."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_folders(args, metrics) -> None:
    """A model given as a local path must be there: found out now, not after the first edit."""
    flags = []
    if {"clip_text", "frame_consistency"} & set(metrics) and args.clip_backend == "transformers":
        flags.append(("--clip_model", args.clip_model))
    if "pickscore" in metrics:
        flags += [("--pickscore_model", args.pickscore_model), ("--pickscore_processor", args.pickscore_processor)]
    if "visor" in metrics:
        flags.append(("--owlvit_model", args.owlvit_model))
    for flag, name in flags:
        if name and _looks_local(name) and not Path(os.path.expanduser(name)).exists():
            raise ConfigError(flag, f"{name} does not exist (a local model folder) and is not a hub id (org/name)")


# ---------------------------------------------------------------------------- running an edit


def loveu_config_path(args, edit: ev.EvalEdit) -> Path:
    """A YAML (JSON syntax) per LOVEU video: base config + the video + its four edits, no regions."""
    from reatco.metrics.frames import list_frame_files

    path = Path(args.out) / "configs" / edit.subset / f"{edit.video}.yaml"
    prompts = {v.category: v.prompt for v in _LOVEU_PROMPTS.get((edit.subset, edit.video), [edit])}
    data = {
        "base_config": str(Path(args.base_config).resolve()),
        "output_dir": str((Path(args.out) / "runs" / edit.subset / edit.video).resolve()),
        "video": {"path": str(Path(edit.source).resolve()), "prompt": edit.source_prompt, "height": args.height,
                  "width": args.width, "n_frames": len(list_frame_files(edit.source))},
        "edits": [{"name": c, "prompt": p, "objects": []} for c, p in sorted(prompts.items())],
        # LOVEU-TGVE gives no regions: nothing marks an invariant region, so IRJS cannot apply.
        "irjs": {"enabled": False},
    }
    ev.write_record(path, data)
    return path


_LOVEU_PROMPTS: dict = {}
_RUNNERS: dict = {}


def run_edit(config_path: str, edit_name: str, overrides, out_dir: Path) -> np.ndarray:
    """The one place that calls the editing code: EditRunner(cfg) -> frames (F, H, W, 3) uint8."""
    from reatco.config import load_config
    from reatco.runner import EditRunner

    key = (str(config_path), tuple(overrides))
    if key not in _RUNNERS:
        _RUNNERS.clear()  # one pipeline in memory at a time; tuning and inversion are cached on disk
        _RUNNERS[key] = EditRunner(load_config(config_path, list(overrides)), progress=False)
    runner = _RUNNERS[key]
    prepared = runner.prepare(only=edit_name)[0]
    return runner.run(prepared, out_dir=out_dir).frames


def save_prediction(frames: np.ndarray, folder: Path, loveu: bool) -> None:
    """Official layout: 00000.jpg ... at 480x480 for LOVEU; lossless png for our configs (fidelity)."""
    from PIL import Image

    tmp = new_partial_dir(folder)  # private to this run
    try:
        for i, frame in enumerate(frames):
            image = Image.fromarray(frame)
            if loveu:
                image.resize((480, 480), Image.BICUBIC).save(tmp / f"{i:05d}.jpg", quality=95)
            else:
                image.save(tmp / f"{i:05d}.png")
        replace_dir(tmp, folder)
    except BaseException:
        remove_quietly(tmp)
        raise


def predictions(args, edit: ev.EvalEdit) -> np.ndarray:
    from reatco.metrics.frames import list_frame_files, to_uint8_frames

    folder = ev.prediction_folder(args.pred_root, edit, args.ablation)
    if not has_frames(folder):
        config = edit.config or loveu_config_path(args, edit)
        overrides = ev.VARIANTS.get(edit.variant, ())
        run_dir = Path(args.out) / "runs" / edit.variant / edit.subset / edit.video / edit.category
        frames = run_edit(config, edit.category, overrides, run_dir)
        save_prediction(frames, folder, loveu=edit.config is None)
    return to_uint8_frames(list_frame_files(folder, field="--pred_root"))


# ---------------------------------------------------------------------------- regions and source of config edits


def config_inputs(edit: ev.EvalEdit, frames: np.ndarray) -> ev.EditInputs:
    """Source frames and region masks of a config edit, at the predictions' size."""
    if edit.config is None:
        return ev.EditInputs(frames)
    from PIL import Image

    from reatco.config import load_config
    from reatco.regions import parse_region
    from reatco.video import read_video, to_uint8

    cfg = load_config(edit.config)
    v = cfg.video
    n, height, width = frames.shape[:3]
    if n != v.n_frames:
        raise ConfigError("--pred_root", f"{edit.key}: {n} predicted frames but video.n_frames is {v.n_frames}")
    source = to_uint8((read_video(v.path, v.height, v.width, v.n_frames, v.start_frame, v.frame_stride) + 1) / 2)
    if source.shape[1:3] != (height, width):
        source = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in source])
    objects = cfg.edits[edit.edit_index].objects
    masks = np.stack([
        np.asarray(parse_region(o, v.n_frames, v.height, v.width, cfg.model.attention_cell_px,
                                field=f"edits[{edit.edit_index}].objects[{j}]").masks(n, height, width)) > 0.5
        for j, o in enumerate(objects)
    ]) if objects else None
    return ev.EditInputs(frames, source, masks, edit.objects)


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    # a ConfigError found while running an edit (the checks run before any model) exits 2 as well
    return run_main(_main, argv, "interrupted: finished score files are kept; rerun to score the rest")


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from reatco.threads import set_threads

    set_threads(args.threads)
    args.pred_root = args.pred_root or str(Path(args.out) / "predictions")
    try:
        metrics = ev.parse_metrics(args.metrics)
        if args.clip_backend == "open_clip" and not args.clip_pretrained:
            raise ConfigError("--clip_pretrained", "the open_clip backend needs a pretrained tag or checkpoint file")
        settings = ev.Settings(args.clip_model, args.clip_backend, args.clip_pretrained, args.keep_aspect,
                               args.pickscore_model, args.pickscore_processor, args.owlvit_model, args.lpips_backbone)
        check_out(args.out)
        edits = collect_edits(args)
        check_predictions(args, edits, metrics, settings)
        check_model_folders(args, metrics)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.data_root:
        for line in coverage_report(read_loveu_csv(Path(args.data_root) / CSV_NAME)):
            print(f"note: partial LOVEU-TGVE copy, {line}", file=sys.stderr)
    for e in edits:
        _LOVEU_PROMPTS.setdefault((e.subset, e.video), []).append(e)

    import torch
    from accelerate import PartialState

    # PartialState only forms a multi-process CPU group (gloo) when told cpu=True; on a machine
    # without CUDA, `accelerate launch --multi_gpu --num_processes N` then shards over CPU processes.
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    settings.device = args.device or str(state.device)
    mine = ev.shard(edits, state.process_index, state.num_processes)
    done = skipped = 0
    for edit in mine:
        path = ev.score_path(args.out, edit)
        start = time.perf_counter()
        frames = predictions(args, edit)
        inputs = config_inputs(edit, frames)
        digest = ev.inputs_digest(edit, inputs)  # scores belong to the frames they scored
        if ev.is_finished(ev.read_json(path), metrics, settings.record(), digest):
            skipped += 1
            continue
        values = ev.score_edit(edit, inputs, metrics, settings)
        record = ev.score_record(edit, values, metrics, settings, len(frames), time.perf_counter() - start, digest)
        with file_lock(Path(args.out) / ".scores.lock", "writing scores"):  # another run may add its metrics meanwhile
            ev.write_record(path, ev.merge_record(ev.read_json(path), record))
        done += 1
    print(f"[process {state.process_index}/{state.num_processes}] scored {done} edit(s), reused {skipped}", file=sys.stderr)
    state.wait_for_everyone()
    if state.is_main_process:
        from reatco.metrics.tables import TAV_REFERENCE, render_tables

        records = [ev.read_json(ev.score_path(args.out, e)) for e in edits]
        lost = [e.key for e, r in zip(edits, records) if r is None]
        if lost:
            print(f"error: score files missing after the run: {lost[:5]}", file=sys.stderr)
            return 1
        summary = ev.summarize(records, ev.summary_metrics(records, metrics), TAV_REFERENCE)
        ev.write_record(Path(args.out) / "summary.json", summary)
        (Path(args.out) / "tables.md").write_text(render_tables(summary) + "\n")
        print(f"wrote {Path(args.out) / 'summary.json'} and {Path(args.out) / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
