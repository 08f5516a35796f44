"""Frames in every form the metrics accept -> PIL images or uint8 arrays.

A video is a sequence of frames: a (F, H, W, 3) uint8 array, a list of PIL images, a list of
image paths, or a folder of images. The LOVEU evaluator opens jpgs and resizes each frame to
480x480 with PIL's default filter before any model sees it; `LOVEU_SIZE` reproduces that.
"""

from __future__ import annotations

import os
from pathlib import Path
import numpy as np
from PIL import Image

from ..errors import ConfigError

LOVEU_SIZE = (480, 480)  # (width, height), as in the official scripts/run_eval.py


def list_frame_files(folder: str | os.PathLike, field: str = "frames") -> list[Path]:
    """The frame images of a folder in natural order (frame2 before frame10), as read_video reads
    them; ConfigError if the folder is missing or holds none."""
    from ..video import frame_files

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(field, f"folder {folder} does not exist")
    return frame_files(folder, field)


def to_pil_frames(frames, size: tuple[int, int] | None = LOVEU_SIZE) -> list[Image.Image]:
    """RGB PIL frames, resized to `size` (width, height) unless it is None (keep the aspect)."""
    if isinstance(frames, (str, os.PathLike)):
        frames = list_frame_files(frames)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected frames (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        images = [Image.fromarray(f) for f in frames]
    else:
        from ..video import image_to_uint8, load_image

        images = [Image.fromarray(image_to_uint8(f)) if isinstance(f, Image.Image) else Image.fromarray(load_image(f, "frames"))
                  for f in frames]
    images = [im.convert("RGB") for im in images]
    if size is None and len({im.size for im in images}) > 1:
        sizes = sorted({im.size for im in images})
        raise ConfigError("frames", f"the frames differ in size ({', '.join(f'{w}×{h}' for w, h in sizes)}); give frames of one size")
    if size is not None:
        # No resample argument on purpose: the official evaluator uses PIL's default filter.
        images = [im.resize(tuple(size)) for im in images]
    return images


def to_uint8_frames(frames, size: tuple[int, int] | None = None) -> np.ndarray:
    """(F, H, W, 3) uint8 array; optional resize to `size` (width, height)."""
    if isinstance(frames, np.ndarray) and size is None:
        return to_uint8_array(frames)
    return np.stack([np.asarray(im) for im in to_pil_frames(frames, size)])


def to_uint8_array(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    return frames
