"""Pictures that explain an edit: per-word attention heat maps over the frames."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB uint8 with a blue→cyan→yellow→red ramp (jet-like, no matplotlib)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 255], [255, 255, 0], [255, 64, 0], [160, 0, 0]], dtype=np.float32)
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    rgb = stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac
    return rgb.astype(np.uint8)


def attention_overlay(frames: np.ndarray, word_maps: torch.Tensor, words: list[str], alpha: float = 0.55) -> np.ndarray:
    """frames (F, H, W, 3) uint8, word_maps (J, F, h, w) → (F, H, J·W, 3): one panel per word, the
    map (normalised per word over the whole clip, so panels compare across frames) over the frame."""
    n_frames, height, width, _ = frames.shape
    maps = word_maps.float()
    maps = torch.nn.functional.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    panels = []
    for j, word in enumerate(words):
        m = maps[j]
        m = (m - m.min()) / (m.max() - m.min()).clamp(min=1e-8)
        heat = heat_colormap(m.numpy())
        panel = (frames.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
        for f in range(n_frames):
            image = Image.fromarray(panel[f])
            ImageDraw.Draw(image).text((4, 4), word, fill=(255, 255, 255))
            panel[f] = np.asarray(image)
        panels.append(panel)
    return np.concatenate(panels, axis=2)


def region_strip(source: np.ndarray, edited: np.ndarray, boxes: np.ndarray, frame_px: int = 128) -> np.ndarray:
    """The source frames over the edited frames, each frame resized (nearest) to `frame_px`, with
    region j's box of every frame outlined on the edited row (white, black, then the palette).
    source, edited (F, H, W, 3) uint8; boxes (J, F, 4) x1, y1, x2, y2 in source pixels (exclusive)."""
    n_frames, height, width = source.shape[:3]
    scale = frame_px / width
    frame_h = round(height * scale)
    colours = [(255, 255, 255), (0, 0, 0), (255, 0, 255), (0, 255, 255)]
    rows = []
    for images, draw_boxes in ((source, False), (edited, True)):
        strip = Image.fromarray(np.concatenate(list(images), 1)).resize((n_frames * frame_px, frame_h), Image.NEAREST)
        if draw_boxes:
            draw = ImageDraw.Draw(strip)
            for j in range(boxes.shape[0]):
                for f in range(n_frames):
                    x1, y1, x2, y2 = (float(v) * scale for v in boxes[j, f])
                    draw.rectangle([x1 + f * frame_px, y1, x2 + f * frame_px - 1, y2 - 1], outline=colours[j % len(colours)])
        rows.append(np.asarray(strip))
    return np.concatenate(rows, 0)
