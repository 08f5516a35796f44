"""summary.json -> markdown laid out like the paper's Tables 1-3."""

from __future__ import annotations

# LOVEU-TGVE-2023 leaderboard, Tune-A-Video baseline (frame consistency x100, CLIP text, PickScore)
TAV_REFERENCE = {"method": "Tune-A-Video (LOVEU-TGVE-2023 leaderboard)", "frame_consistency_x100": 92.40,
                 "clip_text": 27.12, "pickscore": 20.36}

TABLE1 = [("frame_consistency_x100", "Frame Consistency ↑"), ("clip_text", "Textual Alignment ↑"),
          ("pickscore", "PickScore ↑"), ("oa", "OA ↑"), ("visor_cond", "VISOR_cond ↑"),
          ("visor_uncond", "VISOR_uncond ↑")]
TABLE3 = [("psnr", "PSNR ↑"), ("lpips", "LPIPS ↓")]
ABLATION = [("baseline", "✗", "✗"), ("rad", "✓", "✗"), ("irjs", "✗", "✓"), ("full", "✓", "✓")]
GROUP_ORDER = ["overall", "style", "object", "background", "multiple", "configs"]


def _fmt(cell, digits: int = 2) -> str:
    """2 decimals like the paper; LPIPS (values well below 1) gets 4."""
    if cell is None:
        return "–"
    value = cell["mean"] if isinstance(cell, dict) else cell
    if value is None:
        return "–"
    value = float(value)
    if value == float("inf"):
        return "∞"
    return f"{value:.{digits}f}"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header, rows) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _columns(summary, columns):
    return [(f, label) for f, label in columns if any(f in g for v in summary["results"].values() for g in v.values())]


def render_tables(summary: dict) -> str:
    results = summary["results"]
    main_variant = "full" if "full" in results else next(iter(results), None)
    out = ["# ReAtCo evaluation", "",
           f"{summary['n_edits']} scored edits; each number is the plain mean over edits "
           "(frame consistency ×100; VISOR and the invariant-region metrics only over edits with regions).", ""]
    cols = _columns(summary, TABLE1)
    if cols and main_variant:
        out += ["## Table 1: LOVEU-TGVE-2023 and our videos", ""]
        rows = [[TAV_REFERENCE["method"], "76×4", *[_fmt(TAV_REFERENCE.get(f)) for f, _ in cols]]]
        groups = results[main_variant]
        for g in sorted(groups, key=lambda g: GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER)):
            rows.append([f"ReAtCo ({main_variant}) — {g}", str(groups[g]["n_edits"]), *[_fmt(groups[g].get(f)) for f, _ in cols]])
        out += _table(["Method", "Edits", *[label for _, label in cols]], rows) + [""]
    ablation = [a for a in ABLATION if a[0] in results]
    if len(ablation) > 1 and cols:
        out += ["## Table 2: ablation of RAD and IRJS (overall)", ""]
        rows = [[name, rad, irjs, *[_fmt(results[name]["overall"].get(f)) for f, _ in cols]] for name, rad, irjs in ablation]
        out += _table(["Variant", "RAD", "IRJS", *[label for _, label in cols]], rows) + [""]
    cols3 = _columns(summary, TABLE3)
    if cols3:
        out += ["## Table 3: invariant region (outside the union of the regions)", ""]
        known = {a[0]: a for a in ABLATION}
        rows = []
        order = [a[0] for a in ABLATION]
        for variant in sorted(results, key=lambda v: order.index(v) if v in order else -1):
            irjs = known[variant][2] if variant in known else "as configured"
            rows.append([variant, irjs, *[_fmt(results[variant]["overall"].get(f), 4 if f == "lpips" else 2)
                                          for f, _ in cols3]])
        out += _table(["Variant", "IRJS", *[label for _, label in cols3]], rows) + [""]
    return "\n".join(out)
