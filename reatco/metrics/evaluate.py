"""The evaluation run behind scripts/eval_loveu.py: which edits, one edit's scores, the merge.

An edit to score is (subset, video, category, variant). LOVEU-TGVE edits come from the CSV
(category = style/object/background/multiple, no regions); our YAML configs add edits with
regions (subset "configs", video = config stem, category = edit name), which VISOR and the
invariant-region fidelity need. Variants are the paper's ablation (Table 2/3) or "default".
Every finished edit is one JSON file, written atomically, so runs can be sharded and resumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .loveu import CATEGORIES, SUBSETS, prediction_dir, read_loveu_csv, source_frames_dir

METRICS = ("clip_text", "frame_consistency", "pickscore", "visor", "psnr", "lpips")
# values each metric contributes to a score file
METRIC_FIELDS = {
    "clip_text": ("clip_text",),
    "frame_consistency": ("frame_consistency", "frame_consistency_x100"),
    "pickscore": ("pickscore",),
    "visor": ("oa", "visor_cond", "visor_uncond"),
    "psnr": ("psnr",),
    "lpips": ("lpips",),
}
# Table 2 ablation: config overrides per variant ("default" = the configs as written)
VARIANTS = {
    "baseline": ("rad.enabled=false", "irjs.enabled=false"),
    "rad": ("irjs.enabled=false",),
    "irjs": ("rad.enabled=false",),
    "full": ("rad.enabled=true", "irjs.enabled=true"),
}
DEFAULT_VARIANT = "default"
CONFIG_SUBSET = "configs"


@dataclass(frozen=True)
class EvalEdit:
    subset: str
    video: str
    category: str
    variant: str
    prompt: str
    source_prompt: str
    source: str  # LOVEU frame folder, or the config's video path
    config: str | None = None  # YAML of a config edit
    edit_index: int | None = None  # its index in cfg.edits
    objects: tuple = ()  # words of interest (config edits)

    @property
    def key(self) -> str:
        return f"{self.subset}__{self.video}__{self.category}__{self.variant}"

    @property
    def group(self) -> str:
        """Row of the per-category tables: the LOVEU category, or "configs" for our own edits."""
        return self.category if self.subset != CONFIG_SUBSET else CONFIG_SUBSET

    def sort_key(self) -> tuple:
        return (self.subset, self.video, self.category, self.variant)


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ConfigError("--metrics", f"unknown metric(s) {unknown or text!r}; choose from {','.join(METRICS)}")
    return names


def parse_choices(text: str, choices, flag: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise ConfigError(flag, f"unknown value(s) {unknown or text!r}; choose from {','.join(choices)}")
    return names


def loveu_edits(data_root, subsets=SUBSETS, categories=CATEGORIES, variants=(DEFAULT_VARIANT,)) -> list[EvalEdit]:
    """Edits of the LOVEU CSV rows in `subsets`; ConfigError for a missing source video folder."""
    from .loveu import CSV_NAME

    root = Path(data_root)
    if not root.is_dir():
        raise ConfigError("--data_root", f"folder {root} does not exist")
    edits = []
    for video in read_loveu_csv(root / CSV_NAME):
        if video.subset not in subsets:
            continue
        folder = source_frames_dir(root, video)
        if not folder.is_dir():
            raise ConfigError("--data_root", f"video folder {folder} (CSV line {video.row}) does not exist")
        for category in categories:
            for variant in variants:
                edits.append(EvalEdit(video.subset, video.name, category, variant, video.prompts[category],
                                      video.source_prompt, str(folder)))
    return edits


def config_edits(paths, variants=(DEFAULT_VARIANT,)) -> list[EvalEdit]:
    """Edits of our YAML configs (validated by reatco.config); they carry regions."""
    from ..config_files import load_config

    edits = []
    for path in paths:
        cfg = load_config(path)
        stem = Path(path).stem
        for k, edit in enumerate(cfg.edits):
            for variant in variants:
                edits.append(EvalEdit(CONFIG_SUBSET, stem, edit.name, variant, edit.prompt, cfg.video.prompt,
                                      str(cfg.video.path), str(path), k, tuple(o.word for o in edit.objects)))
    return edits


def prediction_folder(pred_root, edit: EvalEdit, ablation: bool) -> Path:
    """`<pred_root>[/<variant>]/<subset>/<video>/<category>` (official layout per variant)."""
    root = Path(pred_root) / edit.variant if ablation else Path(pred_root)
    return prediction_dir(root, edit.subset, edit.video, edit.category)


def shard(edits: list[EvalEdit], index: int, count: int) -> list[EvalEdit]:
    """Process `index` of `count` takes every count-th edit of the stably sorted list."""
    return sorted(edits, key=EvalEdit.sort_key)[index::count]


# ---------------------------------------------------------------------------- score files


def score_path(out, edit: EvalEdit) -> Path:
    return Path(out) / "scores" / f"{edit.key}.json"


def _jsonable(value):
    """NaN -> null, +/-inf -> "inf"/"-inf": strict JSON that any reader accepts."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def number(value) -> float | None:
    """Inverse of `_jsonable` for metric values."""
    if value is None:
        return None
    return float(value)


def write_record(path, data) -> None:
    """A record or summary as JSON (numpy values made plain; NaN refused), written atomically."""
    from ..files import write_json_atomic

    write_json_atomic(path, _jsonable(data), sort_keys=True, allow_nan=False)


def read_json(path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # absent or torn: recompute


def is_finished(record: dict | None, metrics, settings: dict, digest: str | None = None) -> bool:
    """A score file counts only if it scored these very inputs (`digest`, see inputs_digest) with
    the same models and has every asked metric."""
    return (bool(record) and record.get("settings") == settings and record.get("inputs_digest") == digest
            and all(m in record.get("metrics_run", []) for m in metrics))


def merge_record(old: dict | None, new: dict) -> dict:
    """`new` plus the metrics `old` scored on the same inputs with the same models: runs with
    different --metrics on one --out add up instead of replacing each other."""
    if not old or old.get("settings") != new["settings"] or old.get("inputs_digest") != new["inputs_digest"]:
        return new
    merged = dict(new)
    merged["scores"] = {**old.get("scores", {}), **new["scores"]}
    merged["metrics_run"] = sorted(set(old.get("metrics_run", [])) | set(new["metrics_run"]))
    return merged


def summary_metrics(records: list[dict], asked) -> tuple[str, ...]:
    """The asked metrics, plus every metric that all records hold (scored by earlier runs)."""
    held = set.intersection(*(set(r.get("metrics_run", [])) for r in records)) if records else set()
    return tuple(m for m in METRICS if m in set(asked) | held)


# ---------------------------------------------------------------------------- scoring one edit


@dataclass
class Settings:
    """Everything that changes a score; stored in each score file to decide what is reusable."""

    clip_model: str
    clip_backend: str = "transformers"
    clip_pretrained: str | None = None
    keep_aspect: bool = False
    pickscore_model: str = "yuvalkirstain/PickScore_v1"
    pickscore_processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    owlvit_model: str = "google/owlvit-base-patch32"
    lpips_backbone: str = "torchvision"
    device: str | None = field(default=None, compare=False)

    def record(self) -> dict:
        d = asdict(self)
        d.pop("device")
        return d


@dataclass
class EditInputs:
    """What one edit is scored on: edited frames and, for config edits, source and regions."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    source: np.ndarray | None = None  # (F, H, W, 3) uint8, same size as frames
    region_masks: np.ndarray | None = None  # (J, F, H, W) bool
    words: tuple = ()


def expected_relation(prompt: str, words, region_masks) -> tuple[str, str, str] | None:
    """(A, relation, B): a spatial phrase in the prompt wins, else the first two regions' centres."""
    from .visor import parse_relation, relation_from_masks

    parsed = parse_relation(prompt)
    if parsed is not None:
        return parsed
    if region_masks is None or len(words) < 2:
        return None
    return words[0], relation_from_masks(region_masks[0], region_masks[1]), words[1]


def score_edit(edit: EvalEdit, inputs: EditInputs, metrics, settings: Settings) -> dict:
    """Values of the asked metrics (None where the edit lacks what a metric needs: regions)."""
    # (the package exports functions named pickscore/visor, so import from the modules)
    from . import clip_metrics, fidelity
    from .pickscore import load_pickscore, pickscore
    from .visor import load_owlvit, visor

    size = None if settings.keep_aspect else clip_metrics.LOVEU_SIZE
    values: dict = {}
    frames = inputs.frames
    if "clip_text" in metrics or "frame_consistency" in metrics:
        clip = clip_metrics.load_clip(settings.clip_model, settings.clip_backend, settings.clip_pretrained, settings.device)
        if "clip_text" in metrics:
            values["clip_text"] = clip_metrics.text_alignment(frames, edit.prompt, clip, size)
        if "frame_consistency" in metrics:
            fc = clip_metrics.frame_consistency(frames, clip, size)
            values.update(frame_consistency=fc, frame_consistency_x100=100 * fc)
    if "pickscore" in metrics:
        scorer = load_pickscore(settings.pickscore_model, settings.pickscore_processor, settings.device)
        values["pickscore"] = pickscore(frames, edit.prompt, scorer, size)
    if "visor" in metrics:
        relation = expected_relation(edit.prompt, inputs.words, inputs.region_masks)
        if relation is None:
            values.update(oa=None, visor_cond=None, visor_uncond=None)
        else:
            a, rel, b = relation
            detector = load_owlvit(settings.owlvit_model, settings.device)
            values.update(visor(frames, a, b, rel, detector))
            values["visor_relation"] = [a, rel, b]
    has_regions = inputs.region_masks is not None and inputs.source is not None
    invariant = fidelity.invariant_mask(inputs.region_masks) if has_regions else None
    if "psnr" in metrics:
        values["psnr"] = fidelity.masked_psnr(frames, inputs.source, invariant) if has_regions else None
    if "lpips" in metrics:
        if has_regions:
            net = fidelity.load_lpips(settings.lpips_backbone, settings.device)
            values["lpips"] = fidelity.lpips_distance(frames, inputs.source, invariant, net)
        else:
            values["lpips"] = None
    return values


def inputs_digest(edit: EvalEdit, inputs: "EditInputs") -> str:
    """Content hash of what an edit is scored on: the edited frames (as read), and the prompt,
    source frames, regions and words where a metric reads them."""
    from ..fingerprint import digest_array, digest_bytes

    parts = [edit.prompt, list(inputs.words), digest_array(inputs.frames)]
    parts += [digest_array(a) if a is not None else None for a in (inputs.source, inputs.region_masks)]
    return digest_bytes(json.dumps(parts).encode())


def score_record(edit: EvalEdit, values: dict, metrics, settings: Settings, n_frames: int, seconds: float,
                 digest: str | None = None) -> dict:
    return {
        "key": edit.key, "inputs_digest": digest, "subset": edit.subset, "video": edit.video, "category": edit.category,
        "variant": edit.variant, "group": edit.group, "prompt": edit.prompt, "n_frames": n_frames,
        "metrics_run": sorted(metrics), "scores": values, "settings": settings.record(), "seconds": round(seconds, 3),
    }


# ---------------------------------------------------------------------------- merge


def _mean(values) -> dict:
    vals = [number(v) for v in values]
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return {"mean": float(np.mean(vals)) if vals else None, "n": len(vals)}


def summarize(records: list[dict], metrics, reference: dict) -> dict:
    """Plain means over edits, per variant x (category | overall). Deterministic: no timings."""
    fields = [f for m in METRIC_FIELDS if m in metrics for f in METRIC_FIELDS[m]]
    records = sorted(records, key=lambda r: r["key"])
    results: dict = {}
    for variant in sorted({r["variant"] for r in records}):
        mine = [r for r in records if r["variant"] == variant]
        groups = {"overall": mine}
        for g in sorted({r["group"] for r in mine}):
            groups[g] = [r for r in mine if r["group"] == g]
        results[variant] = {
            g: {"n_edits": len(rs), **{f: _mean(r["scores"].get(f) for r in rs) for f in fields}}
            for g, rs in groups.items()
        }
    return {
        "metrics": list(metrics),
        "n_edits": len(records),
        "results": results,
        "reference": reference,
        "edits": {r["key"]: {f: r["scores"].get(f) for f in fields} for r in records},
    }
