"""Editing with the shapes-world model, against the exact truth (`reatco.bench.shapes` runs them):

  editing      the paper's claim in small (reatco/toy/editing.py): two moving shapes become two
               other shapes, one region per edited object following one source object. With the
               config's settings (tuning, inversion, sampling, RAD, IRJS), each case runs three
               times on the same inversion and seed: RAD+IRJS, without RAD, without IRJS.
               Placement accuracy (gate ≥ 0.9 with RAD, and a clear margin over without), VISOR
               relation accuracy, attention mass inside the regions, and the invariant-region PSNR
               against the source (gate ≥ 35 dB with IRJS; the VAE round trip of the source is
               reported beside it as the ceiling). The region boxes are the source objects' boxes
               rounded out to the VAE's latent cells (`edit_box_grid`), the finest grid on which
               IRJS can keep the source; with tight boxes (`edit_box_grid` 1) the part of a cut
               cell outside its box is the model's, reported on its own.
               `families` picks the case families of reatco/toy/families.py, each with its own
               summary and gates (`FAMILY_GATES`).
  regions      regions found from the model's own attention on the source clip (no coordinates):
               per-frame box IoU against the true boxes (gate ≥ 0.7), and placement / invariant
               PSNR of the edit with found regions against the same edit with true regions
               (gate: placement within 0.05).

Every pipeline call takes the config's settings through `reatco.arguments.pipeline_arguments`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..arguments import pipeline_arguments
from ..config import EditConfig
from ..config_files import load_config
from ..metrics.fidelity import masked_psnr as psnr
from .shapes_model import BENCH_OFFSET

EDIT_RUNS = {"rad_irjs": (True, True), "no_rad": (False, True), "no_irjs": (True, False)}
# the temporal smoothness of each run (reatco.toy.editing.temporal_scores) and its CPU seconds
TEMPORAL_KEYS = ("centroid_jitter_px", "region_change", "source_region_change", "region_change_ratio", "flicker",
                 "cpu_seconds")
FAMILY_GATES = dict(placement=0.95, placement_margin=0.6, invariant_db=35.0, stray_frames=0.02)


def _edit_setup(args):
    """What the editing and regions sections share: the config, the shipped pipeline, its UNet
    weights to restore before each case's tuning, the tune settings (None: no tuning), the
    sampling steps and the region box grid."""
    from ..pipeline import ReAtCoPipeline

    cfg = load_config(args.config, args.set)
    pipe = ReAtCoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    base_unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    # edit_tune_steps N > 0 tunes for N steps even where the config does not tune
    tune = cfg.tune if (cfg.tune.enabled or args.edit_tune_steps) and args.edit_tune_steps != 0 else None
    if tune is not None and args.edit_tune_steps is not None:
        tune = dataclasses.replace(tune, steps=args.edit_tune_steps)
    return cfg, pipe, base_unet, tune, cfg.sampling.steps, args.edit_box_grid or pipe.vae_scale_factor


def _prepare_source(pipe, cfg, video, caption, tune, base_unet, steps):
    """Tune (from the shipped weights, when `tune` is set), encode and invert one case's source."""
    from ..tuning import tune_unet

    if tune is not None:  # every case starts from the shipped weights
        pipe.unet.load_state_dict(base_unet)
        tune_unet(pipe.components, video, caption, tune, progress=False)
    with torch.no_grad():
        latents = pipe.encode_video(video, torch.Generator().manual_seed(cfg.sampling.seed))
        trajectory = pipe.invert(latents, cfg.inversion.prompt, steps, cfg.inversion.guidance_scale)
    return latents, trajectory


def _edit(pipe, cfg, prompt, video, latents, trajectory, objects, **changes):
    """One edit of a case with the config's settings on the shared source latents and inversion;
    `changes` replace pipeline arguments. Returns the output and its frames in uint8."""
    kwargs = pipeline_arguments(cfg, EditConfig(name="bench", prompt=prompt), video=video)
    kwargs.update(objects=objects, source_latents=latents, inversion_trajectory=trajectory, output_type="np",
                  return_attention=False)
    kwargs.update(changes)
    out = pipe(**kwargs)
    return out, (out.frames[0] * 255).round().astype(np.uint8)


class TavEditor:
    """The editing section's view of the Tune-A-Video UNet pipeline: a case's source prepared
    (tuned from the shipped weights when the config tunes, encoded, DDIM-inverted), its VAE round
    trip, and edits on that source with the config's settings."""

    backbone = "unet"

    def __init__(self, args):
        self.cfg, self.pipe, self.base_unet, self.tune, self.steps, self.box_grid = _edit_setup(args)
        self.latent_px = self.pipe.vae_scale_factor

    def prepare(self, video, caption):
        return _prepare_source(self.pipe, self.cfg, video, caption, self.tune, self.base_unet, self.steps)

    def roundtrip(self, latents) -> np.ndarray:
        with torch.no_grad():
            return (self.pipe.decode_latents(latents).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

    def edit(self, prompt, video, latents, trajectory, objects, **changes):
        """(output, uint8 frames); the output's attention maps (J, F, h, w) are per pixel frame."""
        return _edit(self.pipe, self.cfg, prompt, video, latents, trajectory, objects, **changes)

    @property
    def tune_steps(self) -> int:
        return self.tune.steps if self.tune is not None else 0

    def edited_cells(self, case, latent_size: int) -> np.ndarray:
        """(F, H, W) bool: the pixels IRJS leaves to the model (the regions' latent cells)."""
        return case.edited_cells(latent_size)


class WanEditor:
    """The editing section's view of a Wan pipeline (`WanReAtCoPipeline` on the model folder): the
    source encoded and flow-inverted with its caption (Wan has no tuning), and edits with the
    config's sampling, RAD and IRJS settings. Clips are 4k + 1 frames; the attention maps, which
    Wan gives per latent frame, are handed out per pixel frame (each pixel frame gets the map of
    the latent frame that covers it), as the Wan runner writes them."""

    backbone = "wan"
    tune_steps = 0

    def __init__(self, args):
        from ..backbones.wan.pipeline import WanReAtCoPipeline

        self.cfg = load_config(args.config, args.set)
        self.pipe = WanReAtCoPipeline.from_pretrained(args.model)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps = self.cfg.sampling.steps
        self.latent_px = self.pipe.vae_scale_factor_spatial
        self.box_grid = args.edit_box_grid or self.latent_px

    def prepare(self, video, caption):
        """Encoded and inverted as the Wan runner does it: in the config's temporal windows, if any."""
        from ..backbones.wan.windows import latent_windows

        windows = latent_windows(video.shape[0], self.cfg.window.size, self.cfg.window.stride,
                                 self.pipe.vae_scale_factor_temporal)
        with torch.no_grad():
            latents = self.pipe.encode_video(video)
            embeds = self.pipe.backbone.encode_prompt(self.cfg.inversion.prompt or caption)
            trajectory = self.pipe.invert(latents, embeds, self.steps, self.cfg.inversion.fixed_point_iters, windows=windows)
        return latents, trajectory

    def roundtrip(self, latents) -> np.ndarray:
        with torch.no_grad():
            return (self.pipe.decode_latents(latents).permute(0, 2, 3, 1).float().numpy() * 255).round().astype(np.uint8)

    def edited_cells(self, case, latent_size: int) -> np.ndarray:
        """(F, H, W) bool: the pixels IRJS leaves to the model. A latent frame covers 4 pixel frames and
        its region is the union of theirs, so on each pixel frame these are the cells of every region
        box of its latent frame's pixel frames: an invariant pixel that another frame of the group has
        in a box cannot be kept (the temporal compression's price, counted in `cut_cells_*`)."""
        from ..backbones.wan import geometry

        per_frame = case.edited_cells(latent_size)
        out = np.empty_like(per_frame)
        for covered in geometry.latent_frame_groups(per_frame.shape[0], self.pipe.vae_scale_factor_temporal):
            out[covered] = per_frame[covered].any(0)
        return out

    def edit(self, prompt, video, latents, trajectory, objects, return_attention: bool = False, **changes):
        from ..backbones.wan import geometry

        s, n_frames = self.cfg.sampling, video.shape[0]
        kwargs = dict(objects=objects, source_latents=latents, inversion_trajectory=trajectory, num_inference_steps=s.steps,
                      guidance_scale=s.guidance_scale, negative_prompt=s.negative_prompt,
                      generator=torch.Generator().manual_seed(s.seed), start_in_regions=s.start_in_regions,
                      rad=self.cfg.rad, irjs=self.cfg.irjs, window=self.cfg.window, rad_blocks=self.cfg.rad.blocks,
                      n_frames=n_frames,
                      height=video.shape[2], width=video.shape[3], return_attention=return_attention, output_type="np")
        kwargs.update(changes)
        out = self.pipe(prompt, **kwargs)
        if out.attention_maps is not None:  # latent frames → the pixel frames each covers
            out.attention_maps = out.attention_maps[:, geometry.latent_frame_index(n_frames, self.pipe.vae_scale_factor_temporal)]
        return out, (out.frames[0] * 255).round().astype(np.uint8)


def editor_for(args):
    """The editing section's pipeline view for the bench's backbone (`args.backbone`, resolved)."""
    return WanEditor(args) if args.backbone == "wan" else TavEditor(args)


def edit_gate(args, _pipe) -> dict:
    from ..toy.editing import (invariant_breakdown, invariant_psnr, kept_scores, placement_scores, region_attention_mass,
                               stray_frames, temporal_scores)
    from ..toy.families import make_case

    editor = editor_for(args)
    box_grid, n_frames = editor.box_grid, args.edit_frames
    rows = []
    for family, i in [(fam, i) for fam in args.families.split(",") for i in range(args.edit_cases)]:
        case = make_case(family, BENCH_OFFSET + args.seed, 40_000 + i, n_frames=n_frames, box_grid=box_grid)
        video = case.video_tensor()
        t0 = time.time()
        latents, trajectory = editor.prepare(video, case.source.caption)
        roundtrip = editor.roundtrip(latents)
        latent_size = case.source.frames.shape[1] // editor.latent_px
        edited = editor.edited_cells(case, latent_size)
        row = {"case": i, "family": family, "prompt": case.prompt, "source": case.source.caption,
               "vae_roundtrip_invariant_psnr": psnr(roundtrip, case.source.frames, case.outside_mask()),
               "vae_roundtrip_kept_cells_psnr": invariant_breakdown(roundtrip, case, latent_size, edited)["kept_cells_psnr"]}
        for name, (use_rad, use_irjs) in EDIT_RUNS.items():
            cpu0 = time.process_time()
            out, frames = editor.edit(case.prompt, video, latents, trajectory, case.objects(), return_attention=True,
                                      rad=dataclasses.replace(editor.cfg.rad, enabled=use_rad),
                                      irjs=dataclasses.replace(editor.cfg.irjs, enabled=use_irjs))
            cpu_seconds = time.process_time() - cpu0
            scores = placement_scores(frames, case)
            row[name] = {"placement": scores["placement"], "relation": scores["relation"], "shapes": scores["shapes"],
                         "invariant_psnr": invariant_psnr(frames, case),
                         # what IRJS controls: the edit against the source's own VAE round trip
                         "invariant_psnr_vs_roundtrip": psnr(frames, roundtrip, case.outside_mask()),
                         # IRJS keeps latent cells: the error in the cells it keeps vs the cells the box edges cut
                         **invariant_breakdown(frames, case, latent_size, edited),
                         "attention_in_regions": region_attention_mass(out.attention_maps, case),
                         "stray_frames": stray_frames(frames, case), "kept": kept_scores(frames, case),
                         **temporal_scores(frames, case), "cpu_seconds": round(cpu_seconds, 2)}
            if args.save_edits:
                prefix = "" if family == "base" else f"{family}_"
                _save_edit(Path(args.save_edits) / f"{prefix}case{i:02d}_{name}.png", case, frames)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"[editing] {family} case {i}: {case.prompt!r} " + " ".join(
            f"{n}: place {row[n]['placement']:.2f} psnr {row[n]['invariant_psnr']:.1f}" for n in EDIT_RUNS), flush=True)
    summary = _edit_summary(rows)
    families = {}
    for fam in args.families.split(","):
        of_family = [row for row in rows if row["family"] == fam]
        families[fam] = {**_edit_summary(of_family), "n_cases": len(of_family)}
        families[fam].update(family_gates(families[fam]))
    with_rad, without = summary["rad_irjs"]["placement"], summary["no_rad"]["placement"]
    return {
        **summary,
        "vae_roundtrip_invariant_psnr": float(np.mean([r["vae_roundtrip_invariant_psnr"] for r in rows])),
        "vae_roundtrip_kept_cells_psnr": float(np.mean([r["vae_roundtrip_kept_cells_psnr"] for r in rows])),
        "placement_gate": 0.9, "placement_passed": bool(with_rad >= 0.9 and with_rad - without >= 0.2),
        "invariant_gate_db": 35.0, "invariant_passed": bool(summary["rad_irjs"]["invariant_psnr"] >= 35.0),
        "backbone": editor.backbone, "config": args.config, "tune_steps": editor.tune_steps, "box_grid": box_grid,
        "n_cases": len(rows), "n_frames": n_frames, "families": families, "cases": rows,
    }


def _edit_summary(rows: list[dict]) -> dict:
    return {name: {key: mean_of_numbers([r[name][key] for r in rows])  # nan: a case without cut cells / kept objects
                   for key in ("placement", "relation", "shapes", "invariant_psnr", "invariant_psnr_vs_roundtrip",
                               "kept_cells_psnr", "cut_cells_psnr", "cut_cells_share", "attention_in_regions",
                               "stray_frames", "kept", *TEMPORAL_KEYS)}
            for name in EDIT_RUNS}


def family_gates(s: dict) -> dict:
    """issue 21's gates on one case family: placement ≥ 0.95 with RAD and ≥ 0.6 above without,
    invariant PSNR ≥ 35 dB with IRJS, stray blobs in ≤ 2 % of the frames (and kept objects kept)."""
    r, n, g = s["rad_irjs"], s["no_rad"], FAMILY_GATES
    gates = {"placement_passed": bool(r["placement"] >= g["placement"] and r["placement"] - n["placement"] >= g["placement_margin"]),
             "invariant_passed": bool(r["invariant_psnr"] >= g["invariant_db"]),
             "stray_passed": bool(r["stray_frames"] <= g["stray_frames"])}
    if not np.isnan(r["kept"]):
        gates["kept_passed"] = bool(r["kept"] >= g["placement"])
    return {**gates, "passed": all(gates.values())}


def regions_gate(args, _pipe) -> dict:
    """Regions found in the source clip (reatco/regions/finding.py: the model's own cross-attention,
    no coordinates) against the exact truth: per-frame IoU of the found boxes with the source
    objects' tight boxes, and the same edit (the config's settings) run with the found regions and
    with the true regions (both rounded out to the `edit_box_grid` like the editing section's).
    Placement is judged against the true boxes in both runs; the invariant region is what lies
    outside each run's own regions."""
    from ..regions.finding import box_iou, find_source_regions
    from ..regions.region import Region
    from ..toy.editing import make_edit_case, placement_scores

    editor = editor_for(args)
    cfg, box_grid = editor.cfg, editor.box_grid
    spec = json.loads(args.region_spec)
    rows = []
    for i in range(args.edit_cases):
        case = make_edit_case(BENCH_OFFSET + args.seed, 40_000 + i, n_frames=args.edit_frames, box_grid=box_grid)
        video = case.video_tensor()
        n_f, size = video.shape[0], video.shape[-1]
        latents, trajectory = editor.prepare(video, case.source.caption)
        t0 = time.time()
        words = [sh.phrase for sh in case.source.shapes]
        found = find_source_regions(editor.pipe, video, latents, case.source.caption, [dict(spec, word=w) for w in words],
                                    cfg.model.attention_cell_px)
        find_seconds = time.time() - t0
        found_boxes = np.stack([r.boxes.numpy() for r in found])  # (J, F, 4)
        ious = [[box_iou(found_boxes[j, f], case.source.boxes[j, f].astype(float)) for f in range(n_f)] for j in range(len(words))]
        # rounded out to the grid, as the true boxes are (snap_boxes)
        snapped = np.concatenate([np.floor(found_boxes[..., :2] / box_grid) * box_grid,
                                  np.minimum(np.ceil(found_boxes[..., 2:] / box_grid) * box_grid, size)], -1).astype(int)
        row = {"case": i, "prompt": case.prompt, "source": case.source.caption, "iou": float(np.mean(ious)),
               "iou_per_object": [float(np.mean(v)) for v in ious], "find_seconds": round(find_seconds, 2),
               "found_boxes": found_boxes.round(1).tolist()}
        for name, boxes in (("true_regions", case.boxes), ("found_regions", snapped)):
            regions = [Region("boxes", n_f, size, size, boxes=torch.from_numpy(boxes[j].astype(np.float64))) for j in range(len(words))]
            _, frames = editor.edit(case.prompt, video, latents, trajectory,
                                    [{"word": w, "region": r} for w, r in zip(case.words, regions)])
            outside = np.ones(frames.shape[:3], bool)
            for j in range(len(words)):
                for f in range(n_f):
                    x1, y1, x2, y2 = boxes[j, f]
                    outside[f, y1:y2, x1:x2] = False
            row[name] = {"placement": placement_scores(frames, case)["placement"],
                         "invariant_psnr": psnr(frames, case.source.frames, outside)}
            if args.save_edits:
                _save_edit(Path(args.save_edits) / f"regions_case{i:02d}_{name}.png", case, frames)
        rows.append(row)
        print(f"[regions] case {i}: IoU {row['iou']:.2f} place true {row['true_regions']['placement']:.2f} "
              f"found {row['found_regions']['placement']:.2f} psnr true {row['true_regions']['invariant_psnr']:.1f} "
              f"found {row['found_regions']['invariant_psnr']:.1f}", flush=True)
    all_ious = [v for r in rows for v in r["iou_per_object"]]
    summary = {name: {key: float(np.mean([r[name][key] for r in rows])) for key in ("placement", "invariant_psnr")}
               for name in ("true_regions", "found_regions")}
    gap = summary["true_regions"]["placement"] - summary["found_regions"]["placement"]
    iou = float(np.mean([r["iou"] for r in rows]))
    return {**summary, "iou": iou, "iou_min_object": float(np.min(all_ious)), "placement_gap": gap,
            "iou_gate": 0.7, "iou_passed": bool(iou >= 0.7), "placement_gap_gate": 0.05, "placement_passed": bool(gap <= 0.05),
            "region_spec": spec, "config": args.config, "box_grid": box_grid, "n_cases": len(rows), "n_frames": args.edit_frames,
            "backbone": editor.backbone, "tune_steps": editor.tune_steps, "cases": rows}


def mean_of_numbers(values: list[float]) -> float:
    """Mean over the values that are not nan (nan if none is)."""
    numbers = [v for v in values if not np.isnan(v)]
    return float(np.mean(numbers)) if numbers else float("nan")


def _save_edit(path: Path, case, frames: np.ndarray):
    """Source row over edited row, region boxes drawn on the edit."""
    from PIL import Image

    from ..visualize import region_strip

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(region_strip(case.source.frames, frames, case.boxes)).save(path)
