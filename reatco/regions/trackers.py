"""Regions from a video object tracker, the way the field makes them: SAM 3 from a word (every
instance of it, tracked through the clip) or SAM 2 from one box or click on one frame (that object,
tracked forwards and backwards through the clip).

    source: {tracker: sam3, query: dolphin, instance: left}
    source: {tracker: sam2, box: [x1, y1, x2, y2], frame: 3}
    source: {tracker: sam2, point: [x, y], frame: 0, region: boxes, margin: 4}

A tracker returns each instance's mask in every frame and its score (`Tracked`). The masks become
the object's region exactly (`region: mask`, the default here), grown by `margin` px, or their
per-frame boxes (`region: boxes`); frames where the instance is lost are filled from the frames
around them. Masks are cached by content (the frames as read, the weights, the prompt), so an edit
runs again without the tracker; the regions are also written to the edit's regions.json and mask
PNGs, which rerun it as a `boxes_file`.

The weights (a hub id or a local folder; defaults `facebook/sam3`, `facebook/sam2.1-hiera-large`)
load only when a config asks for a tracker, and are freed before the edit's own models load.
transformers' `Sam3VideoModel`/`Sam3VideoProcessor` and `Sam2VideoModel`/`Sam2VideoProcessor` do
the tracking; anything with a `track(frames, query=, box=, point=, frame=)` method returning
`Tracked` can stand in (tests, other trackers).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..files import atomic_file
from ..fingerprint import cache_key, digest_path, digest_tensor
from .finding import Instance, choose_track, region_from_track
from .region import Region, mask_box
from .settings import SourceRegionConfig, source_settings

TRACKERS = ("sam2", "sam3")
DEFAULT_MODELS = {"sam2": "facebook/sam2.1-hiera-large", "sam3": "facebook/sam3"}


@dataclass
class Tracked:
    """What a tracker found: `masks` (N, F, H, W) bool, one row per instance (all False where it
    is not seen), `scores` (N,) its confidence (SAM 3: the detection score; SAM 2: the predicted
    mask IoU of the prompted frame)."""

    masks: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        self.masks = np.asarray(self.masks, bool)
        self.scores = np.asarray(self.scores, float).reshape(-1)
        if self.masks.ndim != 4 or self.masks.shape[0] != self.scores.shape[0]:
            raise ValueError(f"a tracker returns (N, F, H, W) masks and N scores, got {self.masks.shape} and {self.scores.shape}")


def tracker_model(spec: SourceRegionConfig) -> str:
    return spec.model or DEFAULT_MODELS[spec.tracker]


def check_tracker_prompt(spec: SourceRegionConfig, n_frames: int, height: int, width: int, field: str) -> None:
    """The prompt of a tracker source against the clip, before any weights load: its frame is in
    the clip, its box or point inside the frame (pixels of the working size, video.height × width)."""
    frame = spec.frame
    if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < n_frames:
        raise ConfigError(f"{field}.frame", f"is {frame!r}, but the clip has frames 0–{n_frames - 1}; "
                                            "give the frame the box or point is drawn on")
    box, point = spec.box, spec.point
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise ConfigError(f"{field}.box", f"{list(box)} is not inside the {width}×{height} frame with x1 < x2 and "
                                              f"y1 < y2 (pixels of video.width × video.height)")
    if point is not None:
        x, y = (float(v) for v in point)
        if not (0 <= x < width and 0 <= y < height):
            raise ConfigError(f"{field}.point", f"{list(point)} is outside the {width}×{height} frame "
                                                "(pixels of video.width × video.height)")


# ----------------------------------------------------------------------------- masks → a region


def tracked_instances(tracked: Tracked) -> list[list[Instance | None]]:
    """One track per instance: its mask and box in each frame where it is seen, None elsewhere."""
    tracks = []
    for masks, score in zip(tracked.masks, tracked.scores):
        track: list[Instance | None] = []
        for f, mask in enumerate(masks):
            track.append(Instance(f, mask_box(mask).astype(float), mask, float(score)) if mask.any() else None)
        tracks.append(track)
    return tracks


def region_from_tracked(tracked: Tracked, spec, field: str, min_side: float = 1.0, whole_cells: int = 1) -> Region:
    """A tracker's instances → the object's Region: the instances scoring at least `score`, the
    one `instance` names (as for the other sources), its masks (`region: mask`) or boxes, grown by
    `margin` px, rounded out to whole cells of `whole_cells` px. spec: a SourceRegionConfig or a
    dict of its fields."""
    spec = source_settings(spec, field)
    _, n_frames, height, width = tracked.masks.shape
    score = 0.0 if spec.score is None else float(spec.score)
    keep = [k for k in range(len(tracked.scores)) if tracked.scores[k] >= score and tracked.masks[k].any()]
    if not keep:
        what = f"{spec.query!r}" if spec.query else "the prompted object"
        best = f" (best score {tracked.scores.max():.2f})" if len(tracked.scores) else ""
        hint = "lower `score` or give a box (tracker: sam2)" if spec.query else "lower `score`, or move the box or point onto the object"
        raise ConfigError(f"{field}.score" if len(tracked.scores) else f"{field}.query",
                          f"no {what} found in frames 0–{n_frames - 1} with score ≥ {score:g}{best}; {hint}")
    tracks = [tracked_instances(tracked)[k] for k in keep]
    instance = spec.instance
    if instance == "all":
        track: list[Instance | None] = []
        for f in range(n_frames):
            union = tracked.masks[keep, f].any(axis=0)
            track.append(Instance(f, mask_box(union).astype(float), union, 1.0) if union.any() else None)
    else:
        track = choose_track(tracks, instance, spec.order, field=f"{field}.instance")
    return region_from_track(track, height, width, spec.margin, spec.region or "mask", min_side, whole_cells)


# ----------------------------------------------------------------------------- the trackers


class Sam2Tracker:
    """SAM 2 video (transformers `Sam2VideoModel`): a box or a click on one frame → that object's
    mask in every frame, propagated forwards from the frame and backwards to frame 0."""

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, progress: bool = True):
        from transformers import Sam2VideoModel, Sam2VideoProcessor

        self.model = Sam2VideoModel.from_pretrained(model, torch_dtype=dtype).to(device).eval()
        self.processor = Sam2VideoProcessor.from_pretrained(model)
        self.device, self.dtype, self.progress = device, dtype, progress

    @torch.no_grad()
    def track(self, frames: np.ndarray, query=None, box=None, point=None, frame: int = 0) -> Tracked:
        n_frames, height, width = frames.shape[:3]
        session = self.processor.init_video_session(video=list(frames), inference_device=self.device, dtype=self.dtype)
        if box is not None:
            self.processor.add_inputs_to_inference_session(session, frame_idx=frame, obj_ids=1,
                                                           input_boxes=[[[float(v) for v in box]]])
        else:
            self.processor.add_inputs_to_inference_session(session, frame_idx=frame, obj_ids=1,
                                                           input_points=[[[[float(v) for v in point]]]], input_labels=[[[1]]])
        first = self.model(inference_session=session, frame_idx=frame)
        score = float(first.object_score_logits.sigmoid().max()) if getattr(first, "object_score_logits", None) is not None else 1.0
        masks = np.zeros((1, n_frames, height, width), bool)
        for reverse in (False, True):
            for out in self.model.propagate_in_video_iterator(session, start_frame_idx=frame, reverse=reverse,
                                                              show_progress_bar=self.progress):
                full = self.processor.post_process_masks([out.pred_masks], original_sizes=[[height, width]], binarize=True)[0]
                masks[0, out.frame_idx] = full.reshape(-1, height, width)[0].cpu().numpy()
        return Tracked(masks, np.array([score]))


class Sam3Tracker:
    """SAM 3 video (transformers `Sam3VideoModel`): a text query → every instance it finds, each
    with its mask in every frame and its detection score."""

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, progress: bool = True):
        from transformers import Sam3VideoModel, Sam3VideoProcessor

        self.model = Sam3VideoModel.from_pretrained(model, torch_dtype=dtype).to(device).eval()
        self.processor = Sam3VideoProcessor.from_pretrained(model)
        self.device, self.dtype, self.progress = device, dtype, progress

    @torch.no_grad()
    def track(self, frames: np.ndarray, query=None, box=None, point=None, frame: int = 0) -> Tracked:
        n_frames, height, width = frames.shape[:3]
        session = self.processor.init_video_session(video=list(frames), inference_device=self.device, dtype=self.dtype)
        session = self.processor.add_text_prompt(session, query)
        per_object: dict[int, np.ndarray] = {}
        scores: dict[int, float] = {}
        for out in self.model.propagate_in_video_iterator(session, show_progress_bar=self.progress):
            processed = self.processor.postprocess_outputs(session, out)
            for k, obj_id in enumerate(processed["object_ids"].tolist()):
                masks = per_object.setdefault(obj_id, np.zeros((n_frames, height, width), bool))
                masks[out.frame_idx] = processed["masks"][k].cpu().numpy()
                scores[obj_id] = max(scores.get(obj_id, 0.0), float(processed["scores"][k]))
        ids = sorted(per_object)
        if not ids:
            return Tracked(np.zeros((0, n_frames, height, width), bool), np.zeros(0))
        return Tracked(np.stack([per_object[i] for i in ids]), np.array([scores[i] for i in ids]))


def load_tracker(name: str, model: str, device: str = "cpu", progress: bool = True, field: str = "source.tracker"):
    """The tracker `name` (sam2 | sam3) with the weights `model` (hub id or local folder)."""
    kinds = {"sam2": Sam2Tracker, "sam3": Sam3Tracker}
    if name not in kinds:
        raise ConfigError(field, f"{name!r} is not a tracker; choose from {', '.join(TRACKERS)}")
    try:
        return kinds[name](model, device, progress=progress)
    except ImportError as err:  # an older transformers: the video models came in its 5.x releases
        raise ConfigError(field, f"{name} needs transformers' {'Sam2' if name == 'sam2' else 'Sam3'}VideoModel, which this "
                                 f"transformers ({_transformers_version()}) lacks: pip install -U transformers") from err
    except OSError as err:
        raise ConfigError(f"{field.rsplit('.', 1)[0]}.model",
                          f"could not load {name} weights from {model!r} ({err}); give a local folder or a hub id "
                          f"such as {DEFAULT_MODELS[name]}") from err


def _transformers_version() -> str:
    try:
        import transformers

        return transformers.__version__
    except ImportError:
        return "not installed"


# ----------------------------------------------------------------------------- the whole step


def _cache_path(cache_dir, frames: np.ndarray, spec: SourceRegionConfig, memo) -> Path:
    parts = dict(kind="tracked_masks", frames=digest_tensor(torch.from_numpy(np.ascontiguousarray(frames))),
                 tracker=spec.tracker, weights=digest_path(tracker_model(spec), memo),
                 query=spec.query, box=spec.box, point=spec.point, frame=spec.frame)
    parts["box"] = None if parts["box"] is None else [float(v) for v in parts["box"]]
    parts["point"] = None if parts["point"] is None else [float(v) for v in parts["point"]]
    return Path(cache_dir) / "tracks" / f"{cache_key(**parts)}.npz"


def _read_cached(path: Path) -> Tracked | None:
    try:
        with np.load(path) as data:
            return Tracked(data["masks"], data["scores"])
    except (OSError, KeyError, ValueError):
        return None


def _write_cached(path: Path, tracked: Tracked) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, masks=tracked.masks, scores=tracked.scores)


def ranked_instances(tracked: Tracked, spec) -> list[list[Instance | None]]:
    """The instances an object may take, as `instance: k` counts them: those scoring at least
    `score`, steady enough to compete (region_finding.choose_track), ranked from the `order` side
    (left by default). Entry k − 1 is the track `instance: k` takes. spec: a SourceRegionConfig
    or a dict of its fields."""
    spec = source_settings(spec)
    score = 0.0 if spec.score is None else float(spec.score)
    tracks = [t for t, s, m in zip(tracked_instances(tracked), tracked.scores, tracked.masks) if s >= score and m.any()]
    ranked = []
    while True:
        try:
            ranked.append(choose_track(tracks, len(ranked) + 1, spec.order))
        except ConfigError:
            return ranked


def track_source_regions(frames: np.ndarray, specs: Sequence, fields: Sequence[str] | None = None, device: str = "cpu",
                         cache_dir: str | os.PathLike | None = None, min_side: float = 1.0, whole_cells: int = 1,
                         progress: bool = True, make_tracker: Callable | None = None) -> list[Region]:
    """Regions of the tracker `specs` (SourceRegionConfig or dicts with tracker, model, query, box,
    point, frame, score, instance, order, margin, region) on the source `frames` (F, H, W, 3) uint8.
    Every prompt is checked against the clip before any weights load; masks come from the cache
    (`cache_dir`/tracks) when the same frames, weights and prompt were tracked before; each
    tracker's weights are loaded once for its specs and freed before returning.
    `make_tracker(name, model, device, progress, field)`: load_tracker, or a stand-in."""
    fields = list(fields) if fields is not None else [f"objects[{j}].source" for j in range(len(specs))]
    specs = [source_settings(spec, field) for spec, field in zip(specs, fields)]
    tracked = track_objects(frames, specs, fields, device, cache_dir, progress, make_tracker)
    return [region_from_tracked(t, s, f, min_side, whole_cells) for t, s, f in zip(tracked, specs, fields)]


def track_objects(frames: np.ndarray, specs: Sequence, fields: Sequence[str] | None = None, device: str = "cpu",
                  cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  make_tracker: Callable | None = None) -> list[Tracked]:
    """What the trackers of `specs` find on `frames`: every prompt checked against the clip first,
    then the cache, then each tracker loaded once for its specs and freed (track_source_regions)."""
    fields = list(fields) if fields is not None else [f"objects[{j}].source" for j in range(len(specs))]
    specs = [source_settings(spec, field) for spec, field in zip(specs, fields)]
    n_frames, height, width = frames.shape[:3]
    for spec, field in zip(specs, fields):
        check_tracker_prompt(spec, n_frames, height, width, field)
    make_tracker = make_tracker or load_tracker
    memo = Path(cache_dir) / "file_hashes.json" if cache_dir is not None else None
    tracked: list[Tracked | None] = [None] * len(specs)
    paths = [_cache_path(cache_dir, frames, s, memo) if cache_dir is not None else None for s in specs]
    for j, path in enumerate(paths):
        if path is not None and path.exists():
            tracked[j] = _read_cached(path)
    groups: dict[tuple[str, str], list[int]] = {}
    for j, spec in enumerate(specs):
        if tracked[j] is None:
            groups.setdefault((spec.tracker, tracker_model(spec)), []).append(j)
    for (name, model), members in groups.items():
        tracker = make_tracker(name, model, device, progress, f"{fields[members[0]]}.tracker")
        try:
            for j in members:
                spec = specs[j]
                tracked[j] = tracker.track(frames, query=spec.query, box=spec.box, point=spec.point, frame=spec.frame)
                if tracked[j].masks.shape[1:] != (n_frames, height, width):
                    raise ValueError(f"the {name} tracker returned masks of shape {tracked[j].masks.shape[1:]} "
                                     f"for a clip of {(n_frames, height, width)}")
                if paths[j] is not None:
                    _write_cached(paths[j], tracked[j])
        finally:  # the tracker's memory is given back before the edit's models load
            del tracker
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return tracked
