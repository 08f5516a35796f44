"""Regions from an open-vocabulary detector: `source: {detector: google/owlvit-base-patch32, query:
"a dolphin"}`. Each frame's detections above `score` become instances, tracked and chosen exactly
like the attention's instances (`regions.finding.region_from_instances`).

Detectors: OWL-ViT (`google/owlvit-base-patch32`, `google/owlvit-base-patch16`,
`google/owlvit-large-patch14`) and OWLv2 (`google/owlv2-base-patch16-ensemble`), by hub id or a
local folder, through transformers' zero-shot object detection classes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .finding import Instance, region_from_instances
from .region import Region
from .settings import source_settings

_LOADED: dict = {}


def load_detector(name: str, device: str = "cpu", field: str = "source.detector"):
    """(model, processor) of an OWL-ViT / OWLv2 detector, loaded once per process."""
    key = (name, device)
    if key not in _LOADED:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        try:
            model = AutoModelForZeroShotObjectDetection.from_pretrained(name).eval().to(device)
            processor = AutoProcessor.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise ConfigError(field, f"cannot load the detector {name!r} (a hub id such as google/owlvit-base-patch32, "
                                     f"or a local folder): {err}") from err
        if model.config.model_type not in ("owlvit", "owlv2"):
            raise ConfigError(field, f"{name} is a {model.config.model_type} model; use OWL-ViT or OWLv2")
        _LOADED[key] = (model, processor)
    return _LOADED[key]


@torch.no_grad()
def detect_instances(frames: np.ndarray, model, processor, query: str, score: float = 0.1) -> list[list[Instance]]:
    """(F, H, W, 3) uint8 frames → per frame, the boxes (pixels) the detector gives `query` with
    at least `score`, best first."""
    from PIL import Image

    device = next(model.parameters()).device
    square = model.config.model_type == "owlv2"  # OWLv2 pads to a square: boxes are relative to it
    out: list[list[Instance]] = []
    for f, frame in enumerate(frames):
        height, width = frame.shape[:2]
        inputs = processor(text=[[query]], images=Image.fromarray(frame), return_tensors="pt").to(device)
        result = model(**inputs)
        scores = result.logits[0, :, 0].float().sigmoid()
        cx, cy, w, h = result.pred_boxes[0].float().unbind(-1)
        sx, sy = (max(width, height),) * 2 if square else (width, height)
        boxes = torch.stack([(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], -1)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, height)
        found = []
        for s, box in zip(scores.tolist(), boxes.cpu().numpy().astype(float)):
            if s >= score and box[2] > box[0] and box[3] > box[1]:
                found.append(Instance(f, box, None, float(s)))
        out.append(_suppress(sorted(found, key=lambda i: -i.score)))
    return out


def _suppress(found: list[Instance], iou: float = 0.5) -> list[Instance]:
    """Non-maximum suppression: OWL-ViT predicts a box per patch, so one object comes many times."""
    from .finding import box_iou

    kept: list[Instance] = []
    for inst in found:
        if all(box_iou(inst.box, k.box) < iou for k in kept):
            kept.append(inst)
    return kept


def detect_source_regions(frames: np.ndarray, specs: Sequence, rad_cell_px: int, device: str = "cpu",
                          fields: Sequence[str] | None = None, whole_cells: int = 1) -> list[Region]:
    """Regions of `specs` (SourceRegionConfig or dicts with detector, query, score, instance,
    order, margin, region) found on the source `frames` (F, H, W, 3) uint8, rounded out to whole
    cells of `whole_cells` px (region_finding.region_from_instances)."""
    fields = list(fields) if fields is not None else [f"objects[{j}].source" for j in range(len(specs))]
    height, width = frames.shape[1:3]
    regions = []
    for spec, field in zip(specs, fields):
        spec = source_settings(spec, field)
        model, processor = load_detector(spec.detector, device, f"{field}.detector")
        per_frame = detect_instances(frames, model, processor, spec.query, spec.score)
        regions.append(region_from_instances(per_frame, height, width, spec.instance, spec.order, spec.margin,
                                             spec.region or "boxes", min_side=rad_cell_px, field=field,
                                             whole_cells=whole_cells))
    return regions
