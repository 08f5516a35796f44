"""RADGuidance: Re-Attentional Diffusion on one backbone, as one object.

It owns what a RAD pass needs and nothing of the sampling loop: the attention recorder and its
layers, the frozen-weights and gradient-checkpointing contexts, the objects' masks and token
indices, the settings, the step-size schedule and the loss log. The pipeline (and the RAD
benchmark) drive it through `attached()`, `update(latents, step_index, t)`, `forward` and the word
maps; the math lives in reatco/rad/losses.py as pure tensor functions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import check_finite
from . import losses as rad_ops
from .attention_maps import AttentionStore, RADForwardComplete
from .settings import RADConfig


@dataclass
class RADPass:
    """The result of one RAD forward; `grad` runs its single backward."""

    x: torch.Tensor
    loss: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor
    word_maps: torch.Tensor
    presence: torch.Tensor  # (J, F) each word's mean raw attention in its region (RADGuidance.presence)
    store: AttentionStore | None = None  # the recorder's store, replaying during the backward

    def grad(self, objective: str = "full") -> torch.Tensor:
        # Checkpointed blocks recompute their attention during the backward: explicitly, as in
        # the forward, and unrecorded.
        replay = self.store.recording("replay") if self.store is not None else contextlib.nullcontext()
        with torch.enable_grad(), replay:  # the pipeline runs under no_grad: the targets need a graph
            if objective == "max_inner":  # official refinement: the worst word's inner term only
                target = self.inner.clamp(min=0).max()
            elif objective == "inner":  # the inner terms alone (official update after refinement)
                target = self.inner.clamp(min=0).sum()
            else:
                target = self.loss
            if not target.requires_grad:
                return torch.zeros_like(self.x)
            return torch.autograd.grad(target, self.x)[0].detach()


class RADGuidance:
    """RAD for one edit: the `backbone` (reatco.backbones.base.Backbone) records cross-attention
    at `layers` on the grid of `masks`
    (J, F, gh, gw), one mask per word in `words` with its prompt `token_indices` (positions in
    the prompt's tokens, as `backbone.word_token_indices` gives them); `cond` is the prompt's
    embedding (1, L, D); `n_text_tokens` the tokens a text-attention row is normalised over, from
    the backbone's `first_text_column` (`backbone.text_token_count`). `num_steps` sets the
    step-size schedule (`settings.step_size` over `step_size_range`).

    Use inside `with guidance.attached():` (recorder installed, weights frozen, checkpointing as
    configured; everything restored on exit)."""

    def __init__(self, backbone, layers: Sequence[str], cond: torch.Tensor, words: Sequence[str],
                 token_indices: Sequence[Sequence[int]], masks: torch.Tensor, settings: RADConfig,
                 n_text_tokens: int, num_steps: int, observations: "AttentionObservations | None" = None):
        self.backbone = backbone
        self.observations = observations  # the call's attention pictures and the anchoring's presence
        self.layers = list(layers)
        self.cond = cond
        self.token_indices = [list(i) for i in token_indices]
        self.masks = masks
        self.settings = settings
        self.n_text_tokens = n_text_tokens
        self.store = AttentionStore(grid=tuple(masks.shape[-2:]), stop_early=settings.early_stop)
        self.log = rad_ops.RADLossLog(words)
        self.step_sizes = rad_ops.step_sizes(num_steps, settings.step_size, tuple(settings.step_size_range))

    @property
    def labels(self) -> list[str]:
        """The words as the loss records name them (a repeated word gets "#2", "#3", ...)."""
        return self.log.words

    @property
    def records(self) -> list[dict]:
        return self.log.steps

    def runs_at(self, step_index: int) -> bool:
        """Whether a RAD pass happens at this step: an update step or a refinement step."""
        return step_index < self.settings.max_update_steps or step_index in self.settings.refinement_thresholds

    @contextlib.contextmanager
    def attached(self, differentiate: bool = True):
        """Recorders on the model; with `differentiate`, frozen weights (RAD needs ∂L/∂x only) and
        gradient checkpointing where the settings ask for it."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.backbone.recording(self.layers, self.store, self.n_text_tokens))
            if differentiate:
                stack.enter_context(self.backbone.differentiable(self.settings.gradient_checkpointing))
            try:
                yield self
            finally:
                self.store.reset()

    # ------------------------------------------------------------------ attention

    def word_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Recorded maps (F, h, w, L) → per-word attention (J, F, h, w), as RAD reads it."""
        rad, first = self.settings, self.backbone.first_text_column
        text = rad_ops.text_attention(maps, self.n_text_tokens, temperature=rad.temperature, normalization=rad.token_normalization,
                                      first=first)
        word_maps = torch.stack([rad_ops.word_attention(text, idx, reduction=rad.word_tokens, first=first)
                                 for idx in self.token_indices])
        if rad.smoothing:
            word_maps = torch.stack(
                [rad_ops.gaussian_smooth_3d(m, kernel=rad.smoothing_kernel, sigma=rad.smoothing_sigma) for m in word_maps]
            )
        return word_maps

    def presence(self, maps: torch.Tensor, frames: Sequence[int] | None = None) -> torch.Tensor:
        """Recorded maps (F, h, w, L) → (J, F): how strongly each word is attended in its region in
        each frame — the mean, over the region's cells, of the attention probability on the word's
        tokens as the model gives it (no normalisation). Where the model leaves an object out, its
        region attends to EOT/padding instead and this is near zero, while the word maps RAD reads
        (shares of the prompt tokens' attention) can still be high. `frames`: the window `maps` holds."""
        masks = (self.masks if frames is None else self.masks[:, frames]).to(maps.device)
        maps = maps.float()
        raw = torch.stack([maps[..., list(idx)].sum(-1) for idx in self.token_indices])  # (J, F, h, w)
        cells = masks.float().flatten(2)
        return (raw.flatten(2) * cells).sum(-1) / cells.sum(-1).clamp(min=1)

    @contextlib.contextmanager
    def observing(self, rows: int, frames: Sequence[int] | None = None):
        """Record the conditional half (`rows` frames) of the model calls inside, detached, for
        attention pictures without RAD and the words' presence; yields a dict that receives
        "word_maps" and "presence" on exit."""
        found: dict[str, torch.Tensor] = {}
        try:
            with self.store.recording("observe", rows):
                yield found
                maps = self.store.maps().float()
                found.update(word_maps=self.word_maps(maps), presence=self.presence(maps, frames))
        finally:
            self.store.reset()

    def observed_call(self, predict: Callable[[], torch.Tensor], step: int, frames: Sequence[int],
                      window: Sequence[int] | None, observe: bool, pictures: bool,
                      word_maps: torch.Tensor | None, presence: torch.Tensor | None) -> torch.Tensor:
        """The model call `predict()` of denoising step `step` on the latent frames `frames`
        (`window`: the same frames, or None for the whole clip), recorded when `observe` (attention
        pictures without RAD, or an anchor step's presence); this window's word maps (kept only
        for `pictures`) and presence, from the RAD pass or observed now, go to the observations."""
        with self.observing(len(frames), window) if observe else contextlib.nullcontext({}) as observed:
            output = predict()
        if observed:
            word_maps = observed["word_maps"] if pictures else None
            presence = observed["presence"]
        self.observations.add(step, frames, word_maps, presence)
        return output

    # ------------------------------------------------------------------ the pass

    def forward(self, latents: torch.Tensor, t, frames: Sequence[int] | None = None) -> RADPass:
        """Conditional forward up to the last recorded layer, and the RAD terms with their graph.
        `frames`: the window of the clip `latents` holds (its masks are used)."""
        masks = self.masks if frames is None else self.masks[:, frames]
        x = latents.detach().requires_grad_(True)
        store = self.store
        with torch.enable_grad():
            with store.recording("record"):
                try:
                    self.backbone.predict(x, t, self.cond)
                except RADForwardComplete:
                    pass  # everything RAD reads has been computed
                maps = store.maps()
            maps = maps.to(torch.promote_types(maps.dtype, torch.float32))  # RAD's math in float32 at least (fp16 maps), float64 kept
            word_maps = self.word_maps(maps)
            presence = self.presence(maps.detach(), frames)
            store.reset()
            rad = self.settings
            inner, outer = rad_ops.region_losses(word_maps, masks, top_k_ratio=rad.top_k_ratio, top_k_rounding=rad.top_k_rounding)
            loss = rad_ops.rad_loss(inner, outer)
        return RADPass(x, loss, inner, outer, word_maps, presence, store)

    def update(self, latents: torch.Tensor, step_index: int, t, frames: Sequence[int] | None = None,
               step_size: float | None = None):
        """RAD at one denoising step: iterative refinement where scheduled, then (at update
        steps) x_t ← x_t − α_t ∇L. `settings.refinement` picks the control flow (RADConfig).
        α_t is the schedule's step size scaled for the window's frame count unless `step_size`
        is given. Returns (latents, the step's loss record, the word maps, the words' presence
        in their regions (`presence`) at the latents the step started from)."""
        rad = self.settings
        if step_size is None:
            step_size = float(self.step_sizes[step_index]) * rad_ops.frame_scale(latents.shape[2], rad.calibration_frames)
        step = self.forward(latents, t, frames)
        first_presence = step.presence
        threshold = rad.refinement_thresholds.get(step_index)
        refine = threshold is not None and rad.max_refinement_iters > 0 and rad_ops.needs_refinement(step.inner, threshold)
        iters = 0
        objective, stale_outer = "full", None
        if refine and rad.refinement == "official":
            # Each iteration steps on the worst word's inner term of the pass at the current
            # latent, then tests the loss of that pass — measured before the step it just took.
            stale_outer = step.outer.detach()  # the official update below adds these, gradient-free
            while True:
                iters += 1
                converged = not rad_ops.needs_refinement(step.inner, threshold)
                latents = _descend(latents, step_size, step.grad("max_inner"))
                if converged or iters >= rad.max_refinement_iters:
                    break
                step = self.forward(latents, t, frames)
            step = self.forward(latents, t, frames)
            objective = "inner"
        elif refine:
            # Each forward feeds exactly one update, and the stop test reads the latest forward.
            while iters < rad.max_refinement_iters and rad_ops.needs_refinement(step.inner, threshold):
                latents = _descend(latents, step_size, step.grad(rad.refinement))
                step = self.forward(latents, t, frames)
                iters += 1
        outer = step.outer if stale_outer is None else stale_outer
        if step_index < rad.max_update_steps and rad_ops.rad_loss(step.inner.detach(), outer).item() != 0.0:
            latents = _descend(latents, step_size, step.grad(objective))
        check_finite(latents, f"after the RAD update at step {step_index}", "lower rad.step_size or use model.dtype=float32")
        extra = {} if frames is None else {"frames": [frames[0], frames[-1]]}
        record = self.log.add(step_index, int(t), step.inner, step.outer, refinement_iters=iters, **extra)
        return latents.detach(), record, step.word_maps.detach(), first_presence


def _descend(latents: torch.Tensor, step_size: float, grad: torch.Tensor) -> torch.Tensor:
    """x ← x − α ∇L in float32 at least (α·∇L rounds badly in fp16; float64 stays), back in the
    latents' dtype."""
    work = torch.promote_types(latents.dtype, torch.float32)
    return (latents.to(work) - step_size * grad.to(work)).to(latents.dtype)


def _accumulate(total, count, values, frames, n_frames):
    """Add a window's per-frame values (J, window frames, ...) into the clip's (J, n_frames, ...)
    running sum and per-frame count (None, 0 to start); the mean is total / count.clamp(min=1)."""
    if total is None:
        total = torch.zeros(values.shape[0], n_frames, *values.shape[2:], device=values.device)
        count = torch.zeros(1, n_frames, *(1,) * (values.dim() - 2), device=values.device)
    total[:, frames] += values
    count[:, frames] += 1
    return total, count


class AttentionObservations:
    """What one call keeps of the words' attention, window by window: the attention pictures (the
    mean word maps over the steps that record them, and the maps of `attention_steps` on their
    own) and, at the anchoring steps, each word's presence in its region per frame."""

    def __init__(self, n_frames: int, pictures: bool, attention_steps: Sequence[int] = (), anchor_steps=()):
        self.n_frames = n_frames
        self.pictures = pictures
        self.attention_steps = set(attention_steps)
        self.anchor_steps = set(anchor_steps)
        self._sum, self._count = None, 0
        self._by_step: dict[int, tuple] = {}  # step index → (sum, count) over its windows
        self._presence: dict[int, tuple] = {}  # anchor step → (sum, count) over its windows

    def add(self, step_index: int, frames, word_maps: torch.Tensor | None, presence: torch.Tensor | None) -> None:
        """One window's word maps (J, window frames, h, w) and presence (J, window frames) at a step."""
        if step_index in self.anchor_steps:
            self._presence[step_index] = _accumulate(*self._presence.get(step_index, (None, 0)), presence, frames, self.n_frames)
        if self.pictures and word_maps is not None:
            self._sum, self._count = _accumulate(self._sum, self._count, word_maps, frames, self.n_frames)
            if step_index in self.attention_steps:
                self._by_step[step_index] = _accumulate(*self._by_step.get(step_index, (None, 0)), word_maps, frames, self.n_frames)

    def presence(self, step_index: int) -> torch.Tensor:
        """(J, F): each word's presence at an anchoring step, averaged over the windows."""
        total, count = self._presence[step_index]
        return total / count.clamp(min=1)

    def mean_maps(self) -> torch.Tensor | None:
        """(J, F, h, w) word maps averaged over the recorded steps, on the CPU; None if none."""
        return None if self._sum is None else (self._sum / self._count.clamp(min=1)).cpu()

    def maps_by_step(self) -> dict[int, torch.Tensor]:
        return {i: (total / count.clamp(min=1)).cpu() for i, (total, count) in sorted(self._by_step.items())}

