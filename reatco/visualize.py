"""Pictures that explain an edit: per-word attention heat maps over the frames (attention.mp4) and
the regions on the source frames (regions.png), at a readable size, labelled outside the image."""

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


def _font(size: int):
    from PIL import ImageFont

    try:  # Pillow's default font, scalable where FreeType is available
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _upscale(image: np.ndarray, width: int) -> Image.Image:
    """An (H, W, 3) frame at `width` px wide: nearest when enlarging (cells stay sharp)."""
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    return Image.fromarray(image).resize((width, height), Image.NEAREST if width >= w else Image.BICUBIC)


def region_boxes(regions, n_frames: int) -> np.ndarray:
    """(J, F, 4) pixel boxes of the regions (a mask region: its tight box per frame)."""
    from .regions.region import mask_box

    out = []
    for region in regions:
        if region.boxes is not None:
            boxes = region.boxes.numpy()
            out.append(np.broadcast_to(boxes, (n_frames, 4)) if len(boxes) == 1 else boxes)
        else:
            out.append(np.stack([mask_box(m > 0.5) for m in region.pixel_masks.numpy()]))
    return np.stack(out).astype(float) if out else np.zeros((0, n_frames, 4))


def colour_bar(height: int, vmax: float, width: int = 14, font=None) -> Image.Image:
    """A vertical bar of `heat_colormap` from 0 (bottom) to vmax (top), with three tick labels."""
    font = font or _font(12)
    ramp = heat_colormap(np.linspace(1, 0, height)[:, None].repeat(width, 1))
    labels = [f"{vmax:.2g}", f"{vmax / 2:.2g}", "0"]
    label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in labels) + 4
    bar = Image.new("RGB", (width + 4 + label_w, height), (0, 0, 0))
    bar.paste(Image.fromarray(ramp), (0, 0))
    draw = ImageDraw.Draw(bar)
    for text, y in zip(labels, (0, height // 2 - 6, height - 13)):
        draw.text((width + 4, max(0, y)), text, fill=(255, 255, 255), font=font)
    return bar


def attention_video(frames: np.ndarray, columns: list[tuple[str, torch.Tensor]], words: list[str],
                    boxes: np.ndarray | None = None, panel_px: int = 160, alpha: float = 0.6) -> np.ndarray:
    """The attention of each word (rows) in each column (e.g. a few denoising steps and their mean)
    over every frame: (F, H', W', 3) uint8, one video frame per source frame.

    frames: (F, H, W, 3) uint8, the edited frames under the maps. columns: (title, maps (J, F, h, w)).
    boxes: (J, F, 4) pixel boxes of the regions, outlined in white. Every panel shares one colour
    scale, 0 to the largest value shown, drawn as a colour bar: a weak map looks weak."""
    n_frames, height, width, _ = frames.shape
    font, small = _font(14), _font(12)
    vmax = max(float(m.max()) for _, m in columns) if columns else 1.0
    vmax = vmax if vmax > 0 else 1.0
    panel_h = round(height * panel_px / width)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([int(measure.textlength(w, font=font)) for w in words] + [40]) + 12
    header_h, title_h = 22, 20
    bar = colour_bar(panel_h * len(words), vmax, font=small)
    canvas_w = label_w + panel_px * len(columns) + 8 + bar.width + 4
    canvas_h = header_h + title_h + panel_h * len(words)
    scaled = [torch.nn.functional.interpolate(m.float(), size=(panel_h, panel_px), mode="nearest").numpy() / vmax
              for _, m in columns]
    out = []
    for f in range(n_frames):
        canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 3), f"frame {f} of {n_frames} (0-based)   attention of each word, one scale: 0 to {vmax:.2g}",
                  fill=(255, 255, 255), font=font)
        base = np.asarray(_upscale(frames[f], panel_px)).astype(np.float32)
        for c, (title, _) in enumerate(columns):
            draw.text((label_w + c * panel_px + 4, header_h + 2), title, fill=(255, 255, 255), font=small)
        for j, word in enumerate(words):
            y = header_h + title_h + j * panel_h
            draw.text((6, y + panel_h // 2 - 8), word, fill=(255, 255, 255), font=font)
            for c in range(len(columns)):
                heat = heat_colormap(scaled[c][j, f]).astype(np.float32)
                panel = Image.fromarray((base * (1 - alpha) + heat * alpha).astype(np.uint8))
                if boxes is not None and len(boxes) > j:
                    s = panel_px / width
                    x1, y1, x2, y2 = (float(v) * s for v in boxes[j, f])
                    ImageDraw.Draw(panel).rectangle([x1, y1, x2 - 1, y2 - 1], outline=(255, 255, 255), width=2)
                canvas.paste(panel, (label_w + c * panel_px, y))
        canvas.paste(bar, (label_w + panel_px * len(columns) + 8, header_h + title_h))
        out.append(np.asarray(canvas))
    return np.stack(out)


def word_overlays(frames: np.ndarray, word_maps: torch.Tensor, boxes: np.ndarray | None = None,
                  alpha: float = 0.6) -> list[np.ndarray]:
    """One (F, H, W, 3) uint8 video per word: its map over the frames, every word on one colour
    scale (0 to the largest value of any word, as in `attention_video`), its region outlined."""
    n_frames, height, width, _ = frames.shape
    maps = torch.nn.functional.interpolate(word_maps.float(), size=(height, width), mode="nearest").numpy()
    vmax = float(maps.max()) if maps.size and maps.max() > 0 else 1.0
    videos = []
    for j in range(len(maps)):
        heat = heat_colormap(maps[j] / vmax).astype(np.float32)
        video = (frames.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)
        if boxes is not None and len(boxes) > j:
            for f in range(n_frames):
                image = Image.fromarray(video[f])
                x1, y1, x2, y2 = (float(v) for v in boxes[j, f])
                ImageDraw.Draw(image).rectangle([x1, y1, x2 - 1, y2 - 1], outline=(255, 255, 255))
                video[f] = np.asarray(image)
        videos.append(video)
    return videos


def regions_sheet(frames: np.ndarray, regions, words: list[str], frame_px: int | None = None, per_row: int = 8) -> np.ndarray:
    """Every frame of the source with every region outlined in its word's colour, frame numbers
    above, and a legend (colour → word) below: (H', W', 3) uint8. frames (F, H, W, 3) uint8;
    frame_px: each frame's width (default: its own, within 192–384 px)."""
    from .regions.region import PALETTE, draw_regions

    n_frames = len(frames)
    frame_px = frame_px or int(np.clip(frames.shape[2], 192, 384))
    font = _font(14)
    tiles = []
    for f in range(n_frames):
        big = np.asarray(_upscale(frames[f], frame_px))
        tiles.append(draw_regions(big, regions, [None] * len(regions), frame=f))
    tile_h = tiles[0].shape[0]
    cols = min(per_row, n_frames)
    rows = -(-n_frames // cols)
    legend_h = 24
    sheet = Image.new("RGB", (cols * (frame_px + 4) + 4, rows * (tile_h + 22) + legend_h + 4), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for f, tile in enumerate(tiles):
        x, y = 4 + (f % cols) * (frame_px + 4), (f // cols) * (tile_h + 22)
        draw.text((x, y + 3), f"frame {f}", fill=(255, 255, 255), font=font)
        sheet.paste(Image.fromarray(tile), (x, y + 20))
    x, y = 4, rows * (tile_h + 22) + 4
    for j, word in enumerate(words):
        colour = PALETTE[j % len(PALETTE)]
        draw.rectangle([x, y + 3, x + 14, y + 17], fill=colour)
        draw.text((x + 20, y + 2), word, fill=(255, 255, 255), font=font)
        x += 20 + int(draw.textlength(word, font=font)) + 24
    return np.asarray(sheet)


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
