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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep

from reatco.cli import run_main  # noqa: E402
from reatco.errors import ConfigError  # noqa: E402
from reatco.files import file_lock  # noqa: E402
from reatco.metrics import evaluate as ev  # noqa: E402
from reatco.metrics import loveu_run as run  # noqa: E402
from reatco.metrics.clip_metrics import BACKENDS, DEFAULT_CLIP  # noqa: E402
from reatco.metrics.loveu import CATEGORIES, CSV_NAME, SUBSETS, coverage_report, read_loveu_csv  # noqa: E402
from reatco.metrics.pickscore import DEFAULT_PICKSCORE_MODEL, DEFAULT_PICKSCORE_PROCESSOR  # noqa: E402
from reatco.metrics.visor import DEFAULT_OWLVIT  # noqa: E402

REPO = Path(__file__).resolve().parents[2]  # the checkout: its configs/


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
        run.check_out(args.out)
        edits = run.collect_edits(args)
        run.check_predictions(args, edits)
        run.check_model_folders(args, metrics)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.data_root:
        for line in coverage_report(read_loveu_csv(Path(args.data_root) / CSV_NAME)):
            print(f"note: partial LOVEU-TGVE copy, {line}", file=sys.stderr)
    prompts = run.loveu_prompts(edits)

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
        frames = run.predictions(args, edit, prompts)
        inputs = run.config_inputs(edit, frames)
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


def command() -> int:
    """Entry point of `reatco-eval-loveu` and of scripts/eval_loveu.py."""
    return main()


if __name__ == "__main__":  # python -m reatco.commands.eval_loveu: this checkout's reatco, from its root
    raise SystemExit(command())
