"""Regions from the source video itself: where the model's own cross-attention puts a word of the
source prompt, split into instances and tracked over the frames. No extra model.

The source latents are forward-noised to a few low noise levels (seeded), the model runs once per
level with the source prompt while the cross-attention layers of one grid level are recorded
(all through the backbone seam, reatco/backbones/base.py, as RAD reads the model), and each
word's share of the prompt tokens' attention is averaged over levels and layers. The map is
upsampled to pixels, thresholded at a fraction of each frame's peak, and split into connected
instances; instances are linked from frame to frame by overlap (`link_tracks`), one track is
chosen by position or size (`choose_track`), and its per-frame boxes (or masks), grown by a
margin, become a `Region` used exactly like a typed one.

The noise levels are model timesteps (`Backbone.renoise_source` at any t): the UNet's DDPM
schedule, Wan's σ = t / 1000. A backbone whose latent frames cover several pixel frames (Wan)
gives maps on latent frames; each pixel frame reads the latent frame that covers it
(`Backbone.frame_groups`). On Wan the maps are the recorder's shares of the prompt's real tokens
(its zero padding takes most of the raw attention).

Everything after the model call is a pure function of arrays, shared with the detector path
(`detector.py`), which produces per-frame boxes instead of maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..backbones.base import Backbone
from ..errors import ConfigError
from ..rad.attention_maps import AttentionStore
from .region import Region
from .settings import source_settings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

@dataclass
class Instance:
    """One connected blob (or detection) in one frame."""

    frame: int
    box: np.ndarray  # x1, y1, x2, y2 float pixels (x2, y2 exclusive)
    mask: np.ndarray | None  # (H, W) bool, None for detections (the box is the mask)
    score: float  # attention mass, or detector confidence

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    @property
    def area(self) -> float:
        if self.mask is not None:
            return float(self.mask.sum())
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


# ----------------------------------------------------------------------------- maps → instances


def upsample_maps(maps: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(F, h, w) attention maps → (F, H, W) at pixel resolution, bilinear (cell centres at cell
    centres), so that a threshold cuts between cells instead of along their edges."""
    up = torch.nn.functional.interpolate(maps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return up[:, 0].numpy()


def frame_instances(maps: np.ndarray, threshold: float = 0.5, min_area: int = 1) -> list[list[Instance]]:
    """(F, H, W) maps → per frame, the connected blobs where the map is ≥ `threshold` × the
    frame's peak (8-connectivity), largest first. A frame whose map is all zero has none."""
    from scipy import ndimage

    out: list[list[Instance]] = []
    for f, m in enumerate(maps):
        peak = float(m.max())
        found: list[Instance] = []
        if peak > 0 and np.isfinite(peak):
            labels, n = ndimage.label(m >= threshold * peak, structure=np.ones((3, 3), bool))
            for k in range(1, n + 1):
                blob = labels == k
                if blob.sum() < min_area:
                    continue
                ys, xs = np.nonzero(blob)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
                found.append(Instance(f, box, blob, float(m[blob].sum())))
        out.append(sorted(found, key=lambda i: -i.area))
    return out


def affinity_features(features: torch.Tensor, frame: torch.Tensor | None, height: int, width: int,
                      colour_weight: float = 1.0) -> np.ndarray:
    """(C, h', w') UNet features of one frame (+ its (3, H, W) pixels in [-1, 1]) → (D, H, W): the
    features upsampled to pixels and the frame's colours, each centred over the frame and scaled
    to unit root-mean-square length per pixel, the colours then × sqrt(`colour_weight`) — so that
    in a cosine the colour cue has `colour_weight` times the features' say (1: equal say).

    Why both cues are scaled: the features carry the object's identity but arrive from a grid 4 px
    (shapes) to 8 px (SD) coarse, blurred across the object's edge by the upsampling; the colours
    are sharp at the edge. Left at their own scales (features of unit length, colours a few
    tenths in [0, 1] units) the colours had almost no say, and a seed grew over the features
    alone: on the shapes demo the circle's box covered 0.70 of the true one (frame 6 a thin
    strip), 0.86 over the other clips of the shapes world; with equal say 1.00 and 0.99."""
    up = torch.nn.functional.interpolate(features[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    cues = [_unit_rms(up - up.mean(dim=(1, 2), keepdim=True))]
    if frame is not None and colour_weight > 0:
        colour = (frame.float() / 2 + 0.5)
        cues.append(colour_weight ** 0.5 * _unit_rms(colour - colour.mean(dim=(1, 2), keepdim=True)))
    return torch.cat(cues).numpy()


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    """(D, H, W) centred values scaled so that the mean over pixels of their squared length is 1
    (a flat cue, all zeros, stays zero)."""
    rms = x.pow(2).sum(0).mean().sqrt()
    return x / rms if float(rms) > 1e-12 else x


def grow_instances(seeds: Sequence[Instance], attention: np.ndarray, feats: np.ndarray, similarity: float = 0.6) -> list[Instance]:
    """Each seed blob (where the word's attention peaks) grown to the object's extent: the pixels
    whose features point the same way as the seed's attention-weighted mean feature (cosine ≥
    `similarity`), connected to the seed. Seeds that grow into the same pixels are merged."""
    from scipy import ndimage

    if not seeds:
        return []
    norm = np.linalg.norm(feats, axis=0).clip(min=1e-6)
    unit = feats / norm
    grown: list[Instance] = []
    for seed in seeds:
        weights = attention * seed.mask
        proto = (feats * weights).sum(axis=(1, 2)) / max(float(weights.sum()), 1e-12)
        proto = proto / max(float(np.linalg.norm(proto)), 1e-6)
        labels, _ = ndimage.label(np.einsum("dhw,d->hw", unit, proto) >= similarity, structure=np.ones((3, 3), bool))
        touched = np.unique(labels[seed.mask & (labels > 0)])
        mask = np.isin(labels, touched) & (labels > 0) | seed.mask
        same = next((g for g in grown if (g.mask & mask).sum() > 0.5 * min(g.mask.sum(), mask.sum())), None)
        if same is not None:
            same.mask |= mask
            same.score += seed.score
            same.box = _mask_box(same.mask)
            continue
        grown.append(Instance(seed.frame, _mask_box(mask), mask, seed.score))
    return sorted(grown, key=lambda i: -i.area)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


# ----------------------------------------------------------------------------- tracking


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes (0 when both are empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _affinity(a: Instance, b: Instance, diagonal: float) -> float:
    """Overlap, or for disjoint boxes a small closeness bonus, so a fast object still links."""
    iou = box_iou(a.box, b.box)
    if iou > 0:
        return 1.0 + iou
    return max(0.0, 1.0 - float(np.linalg.norm(a.centre - b.centre)) / (0.25 * diagonal))


def link_tracks(per_frame: Sequence[Sequence[Instance]], height: int, width: int) -> list[list[Instance | None]]:
    """Link instances frame to frame: each track's last instance takes the best-matching instance
    of the next frame (greedy on overlap, then centre distance under a quarter of the diagonal);
    an instance left over starts a new track. A track may skip frames (None)."""
    n_frames = len(per_frame)
    diagonal = float(np.hypot(height, width))
    tracks: list[list[Instance | None]] = []
    for f, found in enumerate(per_frame):
        pairs = []
        for t, track in enumerate(tracks):
            last = next(i for i in reversed(track) if i is not None)
            for k, inst in enumerate(found):
                score = _affinity(last, inst, diagonal)
                if score > 0:
                    pairs.append((score, t, k))
        used_t, used_k = set(), set()
        for score, t, k in sorted(pairs, reverse=True):
            if t in used_t or k in used_k:
                continue
            tracks[t].append(found[k])
            used_t.add(t)
            used_k.add(k)
        for t, track in enumerate(tracks):
            if t not in used_t:
                track.append(None)
        for k, inst in enumerate(found):
            if k not in used_k:
                tracks.append([None] * f + [inst])
    return [track + [None] * (n_frames - len(track)) for track in tracks]


def _position(track: Sequence[Instance | None]) -> np.ndarray:
    return np.mean([i.centre for i in track if i is not None], axis=0)


def choose_track(tracks: list[list[Instance | None]], instance="largest", order: str = "left",
                 field: str = "source.instance") -> list[Instance | None]:
    """The track an object follows. Only tracks present in at least half as many frames as the
    longest one compete (short ones are flicker). `instance`: largest (mean area) | left | right |
    top | bottom (mean centre) | k ≥ 1 (the k-th counted from the `order` side). `all` is handled
    by the caller (the union of every track)."""
    if not tracks:
        raise ConfigError(field, "nothing was found in any frame; check the word (or query), or lower the threshold")
    longest = max(sum(i is not None for i in t) for t in tracks)
    steady = [t for t in tracks if 2 * sum(i is not None for i in t) >= longest]
    if instance == "largest":
        return max(steady, key=lambda t: np.mean([i.area for i in t if i is not None]))
    if isinstance(instance, str):
        axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[instance]
        return min(steady, key=lambda t: sign * _position(t)[axis])
    axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[order]
    ranked = sorted(steady, key=lambda t: sign * _position(t)[axis])
    if not 1 <= instance <= len(ranked):
        raise ConfigError(field, f"asks for instance {instance} counted from the {order}, but {len(ranked)} "
                                 f"{'was' if len(ranked) == 1 else 'were'} found; use a smaller number or another rule")
    return ranked[instance - 1]


def fill_boxes(track: Sequence[Instance | None]) -> np.ndarray:
    """(F, 4) boxes of a track: frames it skips are interpolated linearly (held at the ends)."""
    known = [f for f, i in enumerate(track) if i is not None]
    boxes = np.zeros((len(track), 4))
    for c in range(4):
        boxes[:, c] = np.interp(np.arange(len(track)), known, [track[f].box[c] for f in known])
    return boxes


def grow_boxes(boxes: np.ndarray, margin: float, min_side: float, height: int, width: int) -> np.ndarray:
    """Boxes grown by `margin` px each way, then to at least `min_side` px a side around their
    centre (one attention cell: RAD needs it), then clipped to the frame."""
    b = boxes.astype(float).copy()
    b[:, :2] -= margin
    b[:, 2:] += margin
    for lo, hi, size in ((0, 2, width), (1, 3, height)):
        side = np.maximum(b[:, hi] - b[:, lo], min(min_side, size))
        centre = (b[:, lo] + b[:, hi]) / 2
        b[:, lo] = np.clip(centre - side / 2, 0, size - side)
        b[:, hi] = b[:, lo] + side
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def round_out_boxes(boxes: np.ndarray, cell: int, height: int, width: int) -> np.ndarray:
    """(…, 4) boxes rounded outwards to whole cells of `cell` px (within the frame); 1 keeps them."""
    if cell <= 1:
        return boxes
    b = np.asarray(boxes, float).copy()
    b[..., :2] = np.floor(b[..., :2] / cell) * cell
    b[..., 2:] = np.ceil(b[..., 2:] / cell) * cell
    b[..., [0, 2]] = b[..., [0, 2]].clip(0, width)
    b[..., [1, 3]] = b[..., [1, 3]].clip(0, height)
    return b


def round_out_masks(masks: np.ndarray, cell: int) -> np.ndarray:
    """(F, H, W) masks grown to every whole `cell`-px cell they touch; 1 keeps them."""
    if cell <= 1:
        return masks
    n, h, w = masks.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.zeros((n, gh * cell, gw * cell), bool)
    padded[:, :h, :w] = masks
    touched = padded.reshape(n, gh, cell, gw, cell).any(axis=(2, 4))
    return np.repeat(np.repeat(touched, cell, 1), cell, 2)[:, :h, :w]


def track_masks(track: Sequence[Instance | None], boxes: np.ndarray, margin: int, height: int, width: int) -> np.ndarray:
    """(F, H, W) masks of a track: its blobs (boxes for detections and skipped frames), dilated
    by `margin` px."""
    from scipy import ndimage

    masks = np.zeros((len(track), height, width), bool)
    for f, inst in enumerate(track):
        if inst is not None and inst.mask is not None:
            masks[f] = inst.mask
        else:
            x1, y1, x2, y2 = np.round(boxes[f]).astype(int)
            masks[f, y1:y2, x1:x2] = True
        if margin > 0:
            masks[f] = ndimage.binary_dilation(masks[f], np.ones((2 * margin + 1,) * 2, bool))
    return masks


def region_from_instances(per_frame: Sequence[Sequence[Instance]], height: int, width: int, instance="largest",
                          order: str = "left", margin: float = 0.0, kind: str = "boxes", min_side: float = 1.0,
                          field: str = "source", whole_cells: int = 1) -> Region:
    """Per-frame instances → one tracked object → a Region (per-frame boxes, or masks), rounded
    out to whole cells of `whole_cells` px (the edit passes its latent cell: IRJS takes every cell
    a region leaves out from the source, so an object pixel in a cell the region only grazes
    would stay in the edit as a ring of the source object's colour)."""
    tracks = link_tracks(per_frame, height, width)
    n_frames = len(per_frame)
    if instance == "all":  # every instance: the box (or mask) around all of them
        if not any(per_frame):
            choose_track([], field=f"{field}.instance")
        merged: list[Instance | None] = []
        for f, found in enumerate(per_frame):
            if not found:
                merged.append(None)
                continue
            boxes = np.stack([i.box for i in found])
            box = np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])
            masks = [i.mask for i in found]
            mask = np.any(masks, axis=0) if all(m is not None for m in masks) else None
            merged.append(Instance(f, box, mask, sum(i.score for i in found)))
        track = merged
    else:
        track = choose_track(tracks, instance, order, field=f"{field}.instance")
    return region_from_track(track, height, width, margin, kind, min_side, whole_cells)


def region_from_track(track: Sequence[Instance | None], height: int, width: int, margin: float = 0.0,
                      kind: str = "boxes", min_side: float = 1.0, whole_cells: int = 1) -> Region:
    """One object's track (an instance or None per frame) → its Region: per-frame boxes (skipped
    frames interpolated), grown by `margin` px and to `min_side`, or its masks dilated by `margin`
    px (boxes where a frame has no mask); both rounded out to whole cells of `whole_cells` px."""
    n_frames = len(track)
    boxes = grow_boxes(fill_boxes(track), margin, min_side, height, width)
    if kind == "mask":
        masks = round_out_masks(track_masks(track, boxes, int(round(margin)), height, width), whole_cells)
        return Region("mask", n_frames, height, width, pixel_masks=torch.from_numpy(masks))
    return Region("boxes", n_frames, height, width, boxes=torch.from_numpy(round_out_boxes(boxes, whole_cells, height, width)))


# ----------------------------------------------------------------------------- the model's attention


def finding_layers(backbone: Backbone, cell_px: int | None, rad_cell_px: int,
                   field: str = "source.attention_cell_px") -> tuple[list[str], int]:
    """The cross-attention layers to read and their cell size in pixels: `cell_px` when given,
    otherwise the finest level of at least half the RAD cell (SD: 16 px, one level finer than
    RAD's 32 px; the shapes model has nothing finer than its 8 px RAD grid)."""
    available = backbone.attention_cell_sizes()
    if cell_px is None:
        finer = [c for c in available if rad_cell_px / 2 <= c <= rad_cell_px]
        cell_px = min(finer) if finer else min(available, key=lambda c: abs(c - rad_cell_px))
    return backbone.attention_layers(cell_px, field), cell_px


@torch.no_grad()
def source_word_maps(backbone: Backbone, source_latents: torch.Tensor, prompt, token_indices: Sequence[Sequence[int]],
                     timesteps: Sequence[int], layers: Sequence[str], grid: tuple[int, int], seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """On the source clip, averaged over the noise levels `timesteps` (each with seeded forward
    noise, one conditional model pass each):
      * (J, F, h, w) each word's cross-attention probability (summed over its tokens, averaged
        over heads and `layers`);
      * (F, C, H', W') the model's finest features (`Backbone.recording_features`), which tell
        where an object ends: the attention of a well-trained word peaks on the object but need
        not cover it.
    source_latents: (1, C, F, h, w) scaled latents; prompt: a str or its PromptTokens."""
    device, dtype = source_latents.device, backbone.dtype
    prompt = backbone.tokenize(prompt)
    cond = backbone.encode_prompt(prompt).to(dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    store = AttentionStore(grid=grid, stop_early=False)
    maps_sum, features_sum = None, None
    n_text_tokens = backbone.text_token_count(prompt, prompt_only=False)
    with backbone.recording_features() as features, backbone.recording(list(layers), store, n_text_tokens):
        for t in timesteps:
            noise = torch.randn(source_latents.shape, generator=generator).to(device, dtype)
            x = backbone.renoise_source(source_latents.to(dtype), int(t), noise)
            features.clear()
            with store.recording("record"):
                backbone.predict(x, torch.tensor(int(t), device=device), cond)
            # The raw probabilities: a per-cell re-normalisation over the prompt tokens (RAD's
            # `share`) inflates cells where the text gets almost no attention at all.
            probs = store.maps().float()
            maps = torch.stack([probs[..., list(idx)].sum(-1) for idx in token_indices])
            maps_sum = maps if maps_sum is None else maps_sum + maps
            features_sum = features[-1] if features_sum is None else features_sum + features[-1]
            store.reset()
    n = len(timesteps)
    return (maps_sum / n).cpu(), (features_sum / n).cpu()


def attention_instances(maps: torch.Tensor, features: torch.Tensor, video: torch.Tensor | None, threshold: float = 0.5,
                        similarity: float = 0.6, colour_weight: float = 1.0) -> list[list[Instance]]:
    """One word's (F, h, w) attention maps, the (F, C, h', w') UNet features and the (F, 3, H, W)
    source frames → per frame, the word's instances at pixel resolution: seed blobs of the
    upsampled attention, each grown over similar features (similarity > 1 keeps the seeds)."""
    n_frames = maps.shape[0]
    height, width = (video.shape[-2], video.shape[-1]) if video is not None else (maps.shape[-2], maps.shape[-1])
    attention = upsample_maps(maps, height, width)
    seeds = frame_instances(attention, threshold)
    if similarity > 1:
        return seeds
    out = []
    for f in range(n_frames):
        feats = affinity_features(features[f], None if video is None else video[f], height, width, colour_weight)
        out.append(grow_instances(seeds[f], attention[f], feats, similarity))
    return out


def find_source_regions(model: Backbone | DiffusionPipeline, video: torch.Tensor, source_latents: torch.Tensor, prompt: str,
                        specs: Sequence, rad_cell_px: int, fields: Sequence[str] | None = None, whole_cells: int = 1) -> list[Region]:
    """The regions of the source objects named by `specs` (SourceRegionConfig, or dicts of its
    fields: `word`, and optionally occurrence, instance, order, margin, region, threshold,
    similarity, colour_weight, timesteps, attention_cell_px, seed), found with `model` (a
    Backbone, or a pipeline: its `backbone`) on `video` (F, 3, H, W) in [-1, 1] with its scaled
    latents (1, C, F, h, w) and source `prompt`. Specs that share the attention settings share the model passes.
    `whole_cells`: see `region_from_instances` (1: the found object's own extent; the runner
    passes the latent cell)."""
    backbone = model if isinstance(model, Backbone) else model.backbone
    fields = list(fields) if fields is not None else [f"objects[{j}].source" for j in range(len(specs))]
    specs = [source_settings(spec, field) for spec, field in zip(specs, fields)]
    prompt = backbone.tokenize(prompt)  # once, for every spec and the model passes
    n_frames, _, height, width = video.shape
    regions: list[Region | None] = [None] * len(specs)
    groups: dict[tuple, list[int]] = {}
    for j, spec in enumerate(specs):
        groups.setdefault((tuple(spec.timesteps), spec.attention_cell_px, spec.seed), []).append(j)
    for (timesteps, cell_px, seed), members in groups.items():
        layers, cell = finding_layers(backbone, cell_px, rad_cell_px, f"{fields[members[0]]}.attention_cell_px")
        indices = [backbone.word_token_indices(prompt, specs[j].word, specs[j].occurrence, field=f"{fields[j]}.word")
                   for j in members]
        maps, features = source_word_maps(backbone, source_latents, prompt, indices, timesteps, layers,
                                          backbone.attention_grid(height, width, cell), seed=seed)
        groups = backbone.frame_groups(n_frames)
        if len(groups) != n_frames:  # latent frames that cover several pixel frames (Wan): each pixel frame reads its own
            index = [g for g, covered in enumerate(groups) for _ in covered]
            maps, features = maps[:, index], features[index]
        for k, j in enumerate(members):
            spec = specs[j]
            per_frame = attention_instances(maps[k], features, video.cpu(), spec.threshold, spec.similarity, spec.colour_weight)
            regions[j] = region_from_instances(per_frame, height, width, spec.instance, spec.order, spec.margin,
                                               spec.region or "boxes", min_side=rad_cell_px, field=fields[j],
                                               whole_cells=whole_cells)
    return regions
