"""Temporal windows (the paper's resource-friendly mode): denoise overlapping windows of frames
and average the overlapping predictions (Gen-L-Video style, uniform weights)."""

from __future__ import annotations

from typing import Sequence

import torch



def temporal_windows(n_frames: int, size: int | None, stride: int = 1) -> list[list[int]]:
    """Frame-index lists of the windows: starts 0, stride, 2·stride, … while the window fits, plus a
    tail window ending at the last frame when the stride does not land there (the official
    `get_views` leaves those frames out). size None or ≥ n_frames → one window of every frame."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be ≥ 1, got {n_frames}")
    if size is None:
        return [list(range(n_frames))]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an integer ≥ 1 (or None for the whole clip), got {size!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer ≥ 1, got {stride!r}")
    if size >= n_frames:
        return [list(range(n_frames))]
    if stride > size:
        raise ValueError(f"stride {stride} > window size {size} would skip frames; use a stride ≤ {size}")
    starts = list(range(0, n_frames - size + 1, stride))
    if starts[-1] + size < n_frames:
        starts.append(n_frames - size)
    return [list(range(s, s + size)) for s in starts]


def window_weights(windows: Sequence[Sequence[int]], n_frames: int) -> torch.Tensor:
    """(F,) how many windows hold each frame."""
    count = torch.zeros(n_frames)
    for w in windows:
        count[list(w)] += 1
    return count


def merge_windows(preds: Sequence[torch.Tensor], windows: Sequence[Sequence[int]], n_frames: int) -> torch.Tensor:
    """Average per-window predictions (B, C, f, h, w) into (B, C, F, h, w): each frame is the plain
    mean of the predictions of the windows that hold it."""
    if len(preds) != len(windows) or not preds:
        raise ValueError(f"{len(preds)} predictions for {len(windows)} windows")
    first = preds[0]
    total = torch.zeros(first.shape[0], first.shape[1], n_frames, *first.shape[3:], dtype=first.dtype, device=first.device)
    for pred, frames in zip(preds, windows):
        if pred.shape[2] != len(frames):
            raise ValueError(f"a prediction of {pred.shape[2]} frames for a window of {len(frames)}")
        total[:, :, list(frames)] += pred
    count = window_weights(windows, n_frames)
    if (count == 0).any():
        missing = torch.nonzero(count == 0).flatten().tolist()
        raise ValueError(f"frames {missing} are in no window")
    return total / count.to(total)[None, None, :, None, None]
