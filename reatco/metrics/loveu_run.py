"""The command line of scripts/eval_loveu.py put to work: its checks and the frames it scores.

`args` is the parsed command line (argparse namespace or any object with the same attributes).
The checks (`check_out`, `collect_edits`, `check_predictions`, `check_model_folders`) raise
ConfigError naming the flag before any model loads. `predictions` reads an edit's frames from
`--pred_root`, first running the edit there when they are missing; `config_inputs` adds the source
frames and region masks of an edit that comes from one of our configs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..files import new_partial_dir, remove_quietly, replace_dir
from . import evaluate as ev
from .loveu import CATEGORIES, SUBSETS, has_frames

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


def check_predictions(args, edits) -> None:
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


def looks_local(name: str) -> bool:
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
        if name and looks_local(name) and not Path(os.path.expanduser(name)).exists():
            raise ConfigError(flag, f"{name} does not exist (a local model folder) and is not a hub id (org/name)")


# ---------------------------------------------------------------------------- running an edit


def loveu_prompts(edits) -> dict:
    """(subset, video) -> its edits, so that one config per LOVEU video holds all its prompts."""
    prompts: dict = {}
    for e in edits:
        prompts.setdefault((e.subset, e.video), []).append(e)
    return prompts


def loveu_config_path(args, edit: ev.EvalEdit, prompts: dict) -> Path:
    """A YAML (JSON syntax) per LOVEU video: base config + the video + its four edits, no regions.
    `prompts` is `loveu_prompts(edits)` of the run."""
    from .frames import list_frame_files

    path = Path(args.out) / "configs" / edit.subset / f"{edit.video}.yaml"
    prompts = {v.category: v.prompt for v in prompts.get((edit.subset, edit.video), [edit])}
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


_RUNNERS: dict = {}


def run_edit(config_path: str, edit_name: str, overrides, out_dir: Path) -> np.ndarray:
    """The one place that calls the editing code: EditRunner(cfg) -> frames (F, H, W, 3) uint8."""
    from ..config_files import load_config
    from ..runner import EditRunner

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


def predictions(args, edit: ev.EvalEdit, prompts: dict) -> np.ndarray:
    """The edit's predicted frames (F, H, W, 3) uint8, run and saved under --pred_root first when missing."""
    from .frames import list_frame_files, to_uint8_frames

    folder = ev.prediction_folder(args.pred_root, edit, args.ablation)
    if not has_frames(folder):
        config = edit.config or loveu_config_path(args, edit, prompts)
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

    from ..config_files import load_config
    from ..regions.parsing import parse_region
    from ..video import read_video, to_uint8

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
