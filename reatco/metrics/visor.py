"""VISOR (Gokhale et al. 2022, microsoft/VISOR) for videos: per frame, then the mean.

Detection (VISOR's text2image_realtime_evaluate.ipynb): OWL-ViT `google/owlvit-base-patch32` with
the queries "a photo of a {A}", "a photo of a {B}"; each predicted box gets the best query's
sigmoid score and label; boxes with score > 0.1 are kept. Scoring (`process_detection` there):
both objects detected -> the relation is satisfied if ANY pair (box of A, box of B) has
centre_x(A) < centre_x(B) for "left", > for "right", centre_y(A) < centre_y(B) for "above"
(image y grows downwards), > for "below".

Per frame f: both_f = A and B detected, correct_f = both_f and the relation holds. Per video:
OA = mean_f both_f, VISOR_uncond = mean_f correct_f (= OA x VISOR_cond), VISOR_cond =
sum correct / sum both (undefined -> NaN when no frame has both). All reported x100, as VISOR does.

Detection is kept apart from scoring: `visor_scores` is a pure function of detections.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..environment import resolve_device
from ._cache import cached
from .frames import to_pil_frames

DEFAULT_OWLVIT = "google/owlvit-base-patch32"
RELATIONS = ("left", "right", "above", "below")
SCORE_THRESHOLD = 0.1
QUERY_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2, (y1 + y2) / 2)


# ---------------------------------------------------------------------------- pure scoring


def relation_holds(relation: str, centre_a: Sequence[float], centre_b: Sequence[float]) -> bool:
    """Is A `relation` B, judged by centres (x right, y down)?"""
    dx, dy = centre_a[0] - centre_b[0], centre_a[1] - centre_b[1]
    if relation == "left":
        return dx < 0
    if relation == "right":
        return dx > 0
    if relation == "above":
        return dy < 0
    if relation == "below":
        return dy > 0
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def score_frame(detections: Sequence[Detection], obj_a: str, obj_b: str, relation: str) -> tuple[bool, bool]:
    """(both detected, relation satisfied by any detected pair) for one frame."""
    a = [d.centre for d in detections if d.label == obj_a]
    b = [d.centre for d in detections if d.label == obj_b]
    both = bool(a) and bool(b)
    correct = both and any(relation_holds(relation, ca, cb) for ca in a for cb in b)
    return both, correct


def visor_scores(frames_detections: Sequence[Sequence[Detection]], obj_a: str, obj_b: str, relation: str) -> dict:
    """OA, VISOR_cond, VISOR_uncond (x100) of one video from its per-frame detections."""
    if not frames_detections:
        raise ValueError("VISOR needs at least one frame")
    per_frame = [score_frame(d, obj_a, obj_b, relation) for d in frames_detections]
    both = np.array([b for b, _ in per_frame], dtype=float)
    correct = np.array([c for _, c in per_frame], dtype=float)
    return {
        "oa": 100 * float(both.mean()),
        "visor_uncond": 100 * float(correct.mean()),
        "visor_cond": 100 * float(correct.sum() / both.sum()) if both.sum() else math.nan,
    }


# ---------------------------------------------------------------------------- expected relation


def relation_from_centres(centre_a: Sequence[float], centre_b: Sequence[float]) -> str:
    """The relation of A to B along the axis where their centres differ most."""
    dx, dy = centre_a[0] - centre_b[0], centre_a[1] - centre_b[1]
    if dx == 0 and dy == 0:
        raise ValueError("the two regions have the same centre; no spatial relation to check")
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def mask_centre(mask) -> tuple[float, float]:
    """(x, y) centre of a (H, W) or (F, H, W) binary mask: mean of its pixel coordinates."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 3:
        m = m.any(axis=0)
    ys, xs = np.nonzero(m)
    if xs.size == 0:
        raise ValueError("empty region mask")
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5)


def relation_from_masks(mask_a, mask_b) -> str:
    return relation_from_centres(mask_centre(mask_a), mask_centre(mask_b))


_ARTICLE = r"(?:(?:the|a|an)\s+)?"
_REL = r"(?:to|on)\s+the\s+(?P<lr>left|right)\s+(?:side\s+)?of|(?P<lr2>left|right)\s+of|(?P<ab>above|below|under|beneath|on\s+top\s+of)"
_PHRASE = re.compile(
    rf"(?P<a>[a-z][\w-]*)\s+(?:(?:is|are)\s+)?(?:{_REL})\s+{_ARTICLE}(?P<b>[a-z][\w-]*)", re.IGNORECASE
)
_VERTICAL = {"above": "above", "on top of": "above", "below": "below", "under": "below", "beneath": "below"}


def parse_relation(text: str) -> tuple[str, str, str] | None:
    """(A, relation, B) from a phrase like "..., with the jellyfish to the left of the goldfish"."""
    matches = list(_PHRASE.finditer(text))
    if not matches:
        return None
    m = matches[-1]  # the spatial clause closes the prompt in the paper's prompts
    if m.group("lr") or m.group("lr2"):
        relation = (m.group("lr") or m.group("lr2")).lower()
    else:
        relation = _VERTICAL[re.sub(r"\s+", " ", m.group("ab").lower())]
    return m.group("a").lower(), relation, m.group("b").lower()


# ---------------------------------------------------------------------------- detection


@dataclass
class OwlVitDetector:
    model: Any
    processor: Any
    device: str

    @torch.no_grad()
    def detect(self, images, labels: Sequence[str], threshold: float = SCORE_THRESHOLD) -> list[list[Detection]]:
        """Detections (score > threshold) of each image for the text queries "a photo of a {label}"."""
        queries = [QUERY_TEMPLATE.format(label) for label in labels]
        result = []
        for image in images:
            inputs = self.processor(text=[queries], images=image, return_tensors="pt").to(self.device)
            out = self.model(**inputs)
            probs = out.logits[0].float().sigmoid()  # (boxes, queries)
            scores, best = probs.max(dim=-1)
            cx, cy, w, h = out.pred_boxes[0].float().unbind(-1)  # normalised to the (unpadded) image
            width, height = image.size
            boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)
            keep = scores > threshold
            result.append([
                Detection(labels[int(q)], float(s), tuple(float(v) for v in box))
                for s, q, box in zip(scores[keep], best[keep], boxes[keep])
            ])
        return result


def load_owlvit(model: str = DEFAULT_OWLVIT, device: str | None = None) -> OwlVitDetector:
    """Load (once per process) OWL-ViT by hub id or local folder."""
    device = str(resolve_device(device, field="device"))

    def load() -> OwlVitDetector:
        from transformers import OwlViTForObjectDetection, OwlViTProcessor

        return OwlVitDetector(OwlViTForObjectDetection.from_pretrained(model).eval().to(device),
                              OwlViTProcessor.from_pretrained(model), device)

    return cached(("owlvit", model, device), load)


def visor(frames, obj_a: str, obj_b: str, relation: str, detector: OwlVitDetector | None = None,
          threshold: float = SCORE_THRESHOLD, size=None, **load_kwargs) -> dict:
    """VISOR of a video: detect A and B in every frame, then `visor_scores`.

    Frames keep their own size by default (boxes are compared, so scale does not matter)."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    detector = detector or load_owlvit(**load_kwargs)
    detections = detector.detect(to_pil_frames(frames, size), [obj_a, obj_b], threshold)
    return visor_scores(detections, obj_a, obj_b, relation)
