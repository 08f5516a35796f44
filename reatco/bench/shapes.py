"""Quality gates of the shapes-world model and of editing with it (scripts/bench_shapes.py is the
command line):

    results = run(Settings(sections="editing", families="cross,three", edit_cases=4))
    print(markdown(results))

The sections: `vae`, `text2image`, `attention` (the model alone, reatco/bench/shapes_model.py),
`editing` and `regions` (editing against the exact truth, reatco/bench/shapes_editing.py).
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


def _check(settings) -> None:
    for name, value, known in (("sections", settings.sections, SECTIONS), ("families", settings.families, FAMILIES)):
        unknown = sorted(set(value.split(",")) - set(known))
        if unknown:
            raise ConfigError(name, f"unknown {', '.join(unknown)}; choose from {','.join(known)}")
    if settings.autocast not in ("none", "bf16"):
        raise ConfigError("autocast", f"{settings.autocast!r} is neither none nor bf16")


# (field, type, default): scripts/bench_shapes.py's flags, whose --help explains them
Settings = settings_class("Settings", [
    ("model", str, "data/shapes-model"), ("seed", int, 0), ("threads", int, 1),
    ("sections", str, ",".join(SECTIONS)), ("autocast", str, "none"),  # comma-separated; none | bf16
    # vae, text2image, attention
    ("n_vae", int, 128), ("n", int, 64), ("steps", int, 25), ("cfg", float, 5.0), ("batch", int, 16),
    ("save_samples", Optional[str], None), ("n_attn", int, 32),
    # editing, regions
    ("config", str, "configs/shapes.yaml"), ("set", list, []),  # config overrides KEY=VALUE
    ("edit_cases", int, 8), ("families", str, "base"),  # cases per family; of reatco.toy.families.FAMILIES
    ("edit_frames", int, 8), ("edit_box_grid", Optional[int], None), ("edit_tune_steps", Optional[int], None),
    ("region_spec", str, "{}"), ("save_edits", Optional[str], None),
], "What to measure (scripts/bench_shapes.py's flags). Unknown sections or families are refused.", __name__, _check)


def run(settings) -> dict:
    """Every section of `settings.sections`, in order, on `settings.threads` torch threads (left
    set); each result has its `seconds`."""
    torch.set_num_threads(settings.threads)
    pipe = load_pipe(settings.model)
    results = dict(model=settings.model, seed=settings.seed, autocast=settings.autocast, threads=settings.threads)
    for name in settings.sections.split(","):
        t0 = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16) if settings.autocast == "bf16" else contextlib.nullcontext():
            results[name] = SECTIONS[name](settings, pipe)
        results[name]["seconds"] = round(time.time() - t0, 1)
    return results


def markdown(results: dict) -> str:
    rows = ["| gate | value | target | pass |", "| --- | --- | --- | --- |"]
    v = results.get("vae")
    if v:
        rows.append(f"| VAE PSNR (held-out, dB) | {v['psnr_mean']:.2f} (min {v['psnr_min']:.2f}) | ≥ 30 | {'✅' if v['passed'] else '❌'} |")
    t = results.get("text2image")
    if t:
        rows.append(f"| text→image colours+shapes right | {t['accuracy']:.2%} (1 obj {t['accuracy_1_object']:.0%}, "
                    f"2 obj {t['accuracy_2_objects']:.0%}) | ≥ 90 % | {'✅' if t['passed'] else '❌'} |")
    a = results.get("attention")
    if a:
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
