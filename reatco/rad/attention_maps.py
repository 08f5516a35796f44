"""Where the cross-attention maps RAD reads are kept during a pass: `AttentionStore`.

A backbone's recorders (`Backbone.recording`; the UNet's: reatco/backbones/tav/recording.py)
add each recorded layer's maps to the store, and only while the store is in a recording mode;
RAD reads them back averaged. The CFG pass never records.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch


class RADForwardComplete(Exception):
    """Raised by the last recorder of a RAD pass: the rest of the UNet is not needed."""


class AttentionStore:
    """Maps recorded during one RAD pass (averaged over heads, then over layers on read)."""

    def __init__(self, grid: tuple[int, int] | None = None, n_layers: int = 0, stop_early: bool = True,
                 columns: Sequence[int] | None = None):
        self.grid = grid  # (h, w) of the attention grid; set by the caller for each pass
        self.n_layers = n_layers  # recorded layers per forward; the last one may stop the forward
        self.stop_early = stop_early
        # token columns kept (a model with hundreds of padding tokens keeps the ones RAD reads); None: all
        self.columns = None if columns is None else list(columns)
        # off: plain SDPA · record: explicit, keep maps with their graph (RAD pass) · replay:
        # explicit, keep nothing (checkpoint recomputation) · observe: explicit, keep the detached
        # maps of the last `observe_rows` batch rows (the conditional half of a CFG pass, for
        # attention pictures when RAD is off)
        self.mode = "off"
        self.observe_rows = 0
        self._maps: list[torch.Tensor] = []

    def reset(self) -> None:
        self._maps = []

    @contextlib.contextmanager
    def recording(self, mode: str = "record", observe_rows: int = 0):
        """The recorded layers compute in `mode` ("record", "replay" or "observe" with the last
        `observe_rows` batch rows) inside; maps recorded before are dropped on entry, and the store
        is off (plain SDPA) again on exit. The one place the mode is set."""
        if mode not in ("record", "replay", "observe"):
            raise ValueError(f"unknown attention store mode {mode!r}")
        self.reset()
        self.mode, self.observe_rows = mode, observe_rows
        try:
            yield self
        finally:
            self.mode, self.observe_rows = "off", 0

    @property
    def explicit(self) -> bool:
        return self.mode != "off"

    def add(self, probs: torch.Tensor) -> None:
        """probs: (batch, heads, h*w, tokens) → kept as the head mean (of `columns` when set)."""
        if self.columns is not None:
            probs = probs[..., self.columns]
        if self.mode == "observe":
            self._maps.append(probs[-self.observe_rows :].mean(dim=1).detach())
            return
        self._maps.append(probs.mean(dim=1))
        if self.stop_early and self.n_layers and len(self._maps) == self.n_layers:
            raise RADForwardComplete

    @property
    def n_recorded(self) -> int:
        return len(self._maps)

    def maps(self) -> torch.Tensor:
        """Mean over recorded layers, shaped (batch·frames, h, w, tokens)."""
        if not self._maps:
            raise RuntimeError("no cross-attention was recorded: is the recorder installed on the RAD layers?")
        mean = torch.stack(self._maps).mean(dim=0)
        h, w = self.grid
        if mean.shape[1] != h * w:
            raise RuntimeError(f"recorded maps have {mean.shape[1]} positions, expected a {h}×{w} grid")
        return mean.reshape(mean.shape[0], h, w, mean.shape[-1])
