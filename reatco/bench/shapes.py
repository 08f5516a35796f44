"""Quality gates of the shapes-world model and of editing with it (scripts/bench_shapes.py is the
command line):

    results = run(Settings(sections="editing", families="cross,three", edit_cases=4))
    print(markdown(results))

The sections: `vae`, `text2image`, `attention` (the model alone, reatco/bench/shapes_model.py),
`editing` and `regions` (editing against the exact truth, reatco/bench/shapes_editing.py).
Both backbones: the UNet model (`data/shapes-model`) and the Wan-layout DiT (`data/shapes-wan`,
`--backbone wan` or read from its model_index.json), on the same case generator and families;
on Wan the model's sections are reatco/toy/wan_eval.py's (text→video) and the clips are 4k + 1
frames (9 by default).
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import numpy as np
import torch

from ..cli import settings_class
from ..errors import ConfigError
from ..toy.families import FAMILIES
from .shapes_editing import edit_gate, regions_gate
from .shapes_model import attention_gate, load_pipe, text2image_gate, vae_gate

SECTIONS = {"vae": vae_gate, "text2image": text2image_gate, "attention": attention_gate, "editing": edit_gate,
            "regions": regions_gate}
BACKBONES = ("auto", "unet", "wan")
DEFAULTS = {"unet": dict(config="configs/shapes.yaml", edit_frames=8),
            "wan": dict(config="configs/shapes-wan.yaml", edit_frames=9)}


def backbone_of_model(settings) -> str:
    """`settings.backbone`, or with "auto" the one the model folder's model_index.json names."""
    from types import SimpleNamespace

    from ..backbones import backbone_of

    return backbone_of(SimpleNamespace(backbone=settings.backbone, pretrained=settings.model))


def _check(settings) -> None:
    for name, value, known in (("sections", settings.sections, SECTIONS), ("families", settings.families, FAMILIES)):
        unknown = sorted(set(value.split(",")) - set(known))
        if unknown:
            raise ConfigError(name, f"unknown {', '.join(unknown)}; choose from {','.join(known)}")
    if settings.autocast not in ("none", "bf16"):
        raise ConfigError("autocast", f"{settings.autocast!r} is neither none nor bf16")
    if settings.backbone not in BACKBONES:
        raise ConfigError("backbone", f"{settings.backbone!r}: choose from {', '.join(BACKBONES)}")
    backbone = backbone_of_model(settings)
    frames = settings.edit_frames
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 2):
        raise ConfigError("edit_frames", f"must be at least 2 frames, got {frames!r}")
    if backbone == "wan":
        if frames is not None and frames % 4 != 1:
            raise ConfigError("edit_frames", f"Wan's VAE needs 4k + 1 frames (5, 9, 13, 17, …), got {frames}")


# (field, type, default): scripts/bench_shapes.py's flags, whose --help explains them
Settings = settings_class("Settings", [
    ("model", str, "data/shapes-model"), ("backbone", str, "auto"), ("seed", int, 0), ("threads", int, 1),
    ("sections", str, ",".join(SECTIONS)), ("autocast", str, "none"),  # comma-separated; none | bf16
    # vae, text2image, attention
    ("n_vae", int, 128), ("n", int, 64), ("steps", int, 25), ("cfg", float, 5.0), ("batch", int, 16),
    ("save_samples", Optional[str], None), ("n_attn", int, 32),
    # editing, regions
    # config and edit_frames: None = the backbone's (DEFAULTS)
    ("config", Optional[str], None), ("set", list, []),  # config overrides KEY=VALUE
    ("edit_cases", int, 8), ("families", str, "base"),  # cases per family; of reatco.toy.families.FAMILIES
    ("edit_frames", Optional[int], None), ("edit_box_grid", Optional[int], None), ("edit_tune_steps", Optional[int], None),
    ("region_spec", str, "{}"), ("save_edits", Optional[str], None),
], "What to measure (scripts/bench_shapes.py's flags). Unknown sections or families are refused.", __name__, _check)


def resolved(settings):
    """The settings with the backbone read from the model and its defaults filled in."""
    import dataclasses

    backbone = backbone_of_model(settings)
    filled = {k: v for k, v in DEFAULTS[backbone].items() if getattr(settings, k) is None}
    return dataclasses.replace(settings, backbone=backbone, **filled)


def run(settings) -> dict:
    """Every section of `settings.sections`, in order, on `settings.threads` torch threads (left
    set); each result has its `seconds`."""
    settings = resolved(settings)
    torch.set_num_threads(settings.threads)
    sections = SECTIONS
    if settings.backbone == "wan":
        from .shapes_wan import SECTIONS as sections, load_pipe as load_wan

        pipe = load_wan(settings.model)
    else:
        pipe = load_pipe(settings.model)
    results = dict(model=settings.model, backbone=settings.backbone, seed=settings.seed, autocast=settings.autocast,
                   threads=settings.threads)
    for name in settings.sections.split(","):
        t0 = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16) if settings.autocast == "bf16" else contextlib.nullcontext():
            results[name] = sections[name](settings, pipe)
        results[name]["seconds"] = round(time.time() - t0, 1)
    return results


def markdown(results: dict) -> str:
    rows = ["| gate | value | target | pass |", "| --- | --- | --- | --- |"]
    v = results.get("vae")
    if v:
        rows.append(f"| VAE PSNR (held-out, dB) | {v['psnr_mean']:.2f} (min {v['psnr_min']:.2f}) | ≥ 30 | {'✅' if v['passed'] else '❌'} |")
    t = results.get("text2image")
    if t and "clip_accuracy" in t:  # Wan: text → video, judged frame by frame
        rows.append(f"| text→video colours+shapes right, per frame | {t['accuracy']:.2%} (whole clips {t['clip_accuracy']:.0%}) "
                    f"| ≥ 90 % | {'✅' if t['passed'] else '❌'} |")
    elif t:
        rows.append(f"| text→image colours+shapes right | {t['accuracy']:.2%} (1 obj {t['accuracy_1_object']:.0%}, "
                    f"2 obj {t['accuracy_2_objects']:.0%}) | ≥ 90 % | {'✅' if t['passed'] else '❌'} |")
    a = results.get("attention")
    if a and "per_sigma" in a:  # Wan: attn2 of the trained blocks, per latent frame
        for sigma, r in a["per_sigma"].items():
            gate = float(sigma) == a["sigma"]
            rows.append(f"| attn2 mass in box (blocks {a['blocks']}), σ={sigma} | {r['mass_in_box']:.2f} (box share "
                        f"{r['box_share']:.2f}, ×{r['ratio']:.1f}) | {'≥ 0.8' if gate else '—'} | "
                        f"{('✅' if a['passed'] else '❌') if gate else '—'} |")
    elif a:
        for t, r in a["per_timestep"].items():
            rows.append(f"| 8×8 attention mass in box, t={t} | {r['mass_in_box']:.2f} (box share {r['box_share']:.2f}, "
                        f"×{r['ratio']:.1f}; peak in box {r['peak_in_box']:.0%}) | — | — |")
    e = results.get("editing")
    if e:
        r, n, o = e["rad_irjs"], e["no_rad"], e["no_irjs"]
        rows.append(f"| placement accuracy, RAD (+IRJS) | {r['placement']:.2f} (without RAD {n['placement']:.2f}) | "
                    f"≥ 0.9 and a clear margin | {'✅' if e['placement_passed'] else '❌'} |")
        rows.append(f"| VISOR relation accuracy, RAD | {r['relation']:.2f} (without RAD {n['relation']:.2f}) | — | — |")
        rows.append(f"| attention mass in the regions, RAD | {r['attention_in_regions']:.2f} (without RAD "
                    f"{n['attention_in_regions']:.2f}) | — | — |")
        grid = f"boxes on the {e['box_grid']} px grid" if e.get("box_grid", 1) > 1 else "tight boxes"
        rows.append(f"| invariant-region PSNR vs source, IRJS (dB; {grid}) | {r['invariant_psnr']:.1f} (without IRJS {o['invariant_psnr']:.1f}; "
                    f"VAE round trip {e['vae_roundtrip_invariant_psnr']:.1f}) | ≥ 35 | {'✅' if e['invariant_passed'] else '❌'} |")
        rows.append(f"| invariant-region PSNR vs the source's VAE round trip, IRJS (dB) | {r['invariant_psnr_vs_roundtrip']:.1f} "
                    f"(without IRJS {o['invariant_psnr_vs_roundtrip']:.1f}) | — | — |")
        rows.append(f"| … in the latent cells IRJS keeps, IRJS (dB) | {r['kept_cells_psnr']:.1f} (VAE round trip "
                    f"{e['vae_roundtrip_kept_cells_psnr']:.1f}) | — | — |")
        if r["cut_cells_share"] > 0:
            rows.append(f"| … in the latent cells the box edges cut ({r['cut_cells_share']:.1%} of the invariant pixels), "
                        f"IRJS (dB) | {r['cut_cells_psnr']:.1f} | — | — |")
    if e and "centroid_jitter_px" in e["rad_irjs"]:
        rows.append(f"| temporal smoothness, RAD+IRJS: centroid jitter (px), region change vs the source's, flicker "
                    f"| {r['centroid_jitter_px']:.2f} px, ×{r['region_change_ratio']:.2f}, {r['flicker']:.1%} "
                    f"(without RAD {n['centroid_jitter_px']:.2f} px, ×{n['region_change_ratio']:.2f}, {n['flicker']:.1%}) | — | — |")
        rows.append(f"| CPU seconds per edit, RAD+IRJS ({e['n_frames']} frames) | {r['cpu_seconds']:.1f} (without RAD "
                    f"{n['cpu_seconds']:.1f}) | — | — |")
    if e and set(e.get("families", {})) - {"base"}:
        rows += ["", "| family (cases) | placement RAD (without) | VISOR relation RAD (without) | stray-blob frames RAD "
                 "(without IRJS) | invariant PSNR IRJS (without) dB | kept | gates |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for fam, s in e["families"].items():
            r, n, o = s["rad_irjs"], s["no_rad"], s["no_irjs"]
            failed = [k[:-7] for k, v in s.items() if k.endswith("_passed") and not v]
            kept = "—" if np.isnan(r["kept"]) else f"{r['kept']:.2f}"
            rows.append(f"| {fam} ({s['n_cases']}) | {r['placement']:.2f} ({n['placement']:.2f}) | {r['relation']:.2f} "
                        f"({n['relation']:.2f}) | {r['stray_frames']:.1%} ({o['stray_frames']:.1%}) | {r['invariant_psnr']:.1f} "
                        f"({o['invariant_psnr']:.1f}) | {kept} "
                        f"| {'✅' if s['passed'] else '❌ ' + ', '.join(failed)} |")
    g = results.get("regions")
    if g:
        t, f = g["true_regions"], g["found_regions"]
        rows.append(f"| found regions: box IoU with the true boxes, per frame | {g['iou']:.2f} (worst object {g['iou_min_object']:.2f}) "
                    f"| ≥ 0.7 | {'✅' if g['iou_passed'] else '❌'} |")
        rows.append(f"| placement, found regions vs true regions | {f['placement']:.2f} vs {t['placement']:.2f} "
                    f"| within 0.05 | {'✅' if g['placement_passed'] else '❌'} |")
        rows.append(f"| invariant-region PSNR, found regions vs true regions (dB) | {f['invariant_psnr']:.1f} vs "
                    f"{t['invariant_psnr']:.1f} | — | — |")
    return "\n".join(rows)


COMPARED = (("placement", "placement, RAD+IRJS", "{:.2f}"), ("invariant_psnr", "invariant-region PSNR, IRJS (dB)", "{:.1f}"),
            ("centroid_jitter_px", "centroid jitter about the box path (px, 2nd differences)", "{:.2f}"),
            ("region_change_ratio", "frame-to-frame change in the regions vs the source's own", "×{:.2f}"),
            ("flicker", "flicker (object appears / disappears between frames)", "{:.1%}"),
            ("stray_frames", "frames with a stray blob", "{:.1%}"), ("cpu_seconds", "CPU seconds per edit", "{:.1f}"))


def compare_markdown(results: dict[str, dict], family: str | None = None) -> str:
    """The editing sections of several runs (label → bench results) side by side: placement,
    invariant PSNR, temporal smoothness and CPU time of the RAD+IRJS run (the backbone comparison).
    `family`: that case family's rows of each run instead of the pooled ones, so that runs over
    different families compare on the same cases."""
    labels = list(results)
    sections = {}
    for label, res in results.items():
        edit = res.get("editing") if isinstance(res, dict) else None
        if family is not None and isinstance(edit, dict):
            of_family = (edit.get("families") or {}).get(family)
            if not isinstance(of_family, dict):
                raise ValueError(f"{label}: the results have no {family!r} family (run with --families {family})")
            edit = {**of_family, "n_frames": edit.get("n_frames")}
        if not isinstance(edit, dict) or not isinstance(edit.get("rad_irjs"), dict):
            raise ValueError(f"{label}: the results have no editing section with a rad_irjs run")
        sections[label] = edit

    def number(value) -> float:  # results files are read back: anything not a number shows as nan
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")

    rows = ["| RAD+IRJS, on the same held-out cases | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for key, name, fmt in COMPARED:
        rows.append(f"| {name} | " + " | ".join(fmt.format(number(sections[k]["rad_irjs"].get(key)))
                                            for k in labels) + " |")
    rows.append("| cases × frames | " + " | ".join(f"{sections[k].get('n_cases', '?')} × {sections[k].get('n_frames', '?')}"
                                                 for k in labels) + " |")
    return "\n".join(rows)
