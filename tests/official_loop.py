"""A reference of the official ReAtCo denoising loop, for tests.

Written from reading mdswyz/ReAtCo @9ecd5c0 `tuneavideo/pipelines/pipeline_split_gen.py` (with
`ptp_utils.py` and `gaussian_smoothing.py`): the same control flow, step by step, in plain code
that shares nothing with reatco's RAD/IRJS/window modules — only the UNet, the text encoder and
a DDIM scheduler are reused. Facts reproduced:

  for each step i, for each window (get_views: starts 0, 1, …, F − size; one window = whole clip):
    RAD   conditional forward with grad; maps = mean over the heads and layers of the cross-
          attention at the RAD grid (conditional prompt); softmax(100 · A[..., 1:76]); per word:
          3×3×3 Gaussian smoothing (reflect pad), per frame top-K means inside / outside the box
          with K = int(0.2 · area); fg_j, bg_j = means over frames;
          loss_fg = max_j max(0, 1 − fg_j); loss = Σ_j max(0, 1 − fg_j) + Σ_j max(0, bg_j)
          if i in thresholds and loss_fg > 1 − threshold: refinement (below)
          if i < max_iter_to_alter and loss != 0: x ← x − α_i ∇_x loss
    IRJS  (maintain_back) noise drawn for the window; V_t = add_noise(V_0, noise, t); the CFG
          input and the latent the step is taken from are x ⊙ M + V_t ⊙ (1 − M)
    CFG   ε = ε_u + g (ε_c − ε_u); DDIM step (eta 0)
    windows' outputs averaged per frame.
  refinement: repeat { iteration += 1; forward at x; loss_fg, losses_fg (fresh);
                       if loss_fg != 0: x ← x − α ∇ loss_fg; if iteration ≥ 20: break }
              while the loss_fg computed in the last iteration (before its step) > 1 − threshold;
              then a fresh forward at x gives the fg terms; the bg terms stay those of the pass
              before refinement (their graph hangs off the old latent: zero gradient).

Two departures, both the fixes reatco keeps by default and both inactive on the inputs the tests
use: box x coordinates are divided by the width ratio (the official code uses the height ratio;
the same number when both sides are multiples of the cell), and noise comes from a seeded
generator (drawn in the same order as reatco draws it) instead of an unseeded `randn_like`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


class _Recorder:
    """attn2 processor: plain explicit attention; keeps probs at the RAD grid while recording."""

    def __init__(self, n_cells: int):
        self.n_cells = n_cells
        self.recording = False
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert attn.group_norm is None and attn.spatial_norm is None and attention_mask is None
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, None)  # (frames · heads, cells, tokens)
        if self.recording and probs.shape[1] == self.n_cells:
            self.maps.append(probs.reshape(-1, attn.heads, *probs.shape[1:]))  # (frames, heads, cells, tokens)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def _kernel3d(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """GaussianSmoothing(channels=1, kernel_size=3, sigma=0.5, dim=3).weight (built in float64
    here; the official builds it in float32 and casts it to the maps' dtype)."""
    grids = torch.meshgrid(*[torch.arange(size, dtype=torch.float64)] * 3, indexing="ij")
    kernel = 1.0
    for g in grids:
        mean = (size - 1) / 2
        kernel = kernel * 1 / (sigma * math.sqrt(2 * math.pi)) * torch.exp(-(((g - mean) / (2 * sigma)) ** 2))
    return (kernel / kernel.sum())[None, None]


def _py_max0(value):
    """Python's max(0, value) as the official code evaluates it (0 stays the int 0)."""
    return max(0, value)


class OfficialLoop:
    def __init__(self, unet, scheduler, cond, uncond, token_indices, boxes, height, width, grid, P=0.2):
        self.unet, self.scheduler = unet, scheduler
        self.cond, self.text_embeddings = cond, torch.cat([uncond, cond])
        self.token_indices, self.boxes = token_indices, boxes
        self.height, self.width, self.grid, self.P = height, width, grid, P
        self.recorder = _Recorder(grid[0] * grid[1])
        self.refinement_iterations: list[int] = []  # one entry per refinement, in order

    # ---------------------------------------------------------------- RAD terms

    def _forward_terms(self, latents, t):
        """Conditional forward at `latents` (leaf with grad) → per-word fg and bg terms."""
        self.recorder.maps = []
        self.recorder.recording = True
        try:
            self.unet(latents, t, encoder_hidden_states=self.cond)
        finally:
            self.recorder.recording = False
        maps = torch.cat(self.recorder.maps, dim=1).mean(dim=1)  # mean over heads and layers
        maps = maps.reshape(maps.shape[0], *self.grid, maps.shape[-1])  # (F, h, w, 77)
        text = torch.softmax(maps[..., 1:-1] * 100, dim=-1)
        fg, bg = [], []
        for index, box in zip(self.token_indices, self.boxes):
            video = text[..., index - 1]
            gh, gw = self.grid
            x1, x2 = (max(round(b / (self.width / gw)), 0) for b in (box[0], box[2]))
            y1, y2 = (max(round(b / (self.height / gh)), 0) for b in (box[1], box[3]))
            obj = torch.zeros_like(video)
            obj[:, y1:y2, x1:x2] = 1
            out = 1 - obj
            padded = F.pad(video[None, None], (1, 1, 1, 1, 1, 1), mode="reflect")
            video = F.conv3d(padded, _kernel3d().to(video))[0, 0]
            fg_frames, bg_frames = [], []
            for j, image in enumerate(video):
                k = (obj[j].sum() * self.P).long()
                fg_frames.append((image * obj[j]).reshape(-1).topk(int(k))[0].mean())
                k = (out[j].sum() * self.P).long()
                bg_frames.append((image * out[j]).reshape(-1).topk(int(k))[0].mean())
            fg.append(torch.stack(fg_frames).mean())
            bg.append(torch.stack(bg_frames).mean())
        return fg, bg

    @staticmethod
    def _loss(fg, bg):
        losses_fg = [_py_max0(1.0 - f) for f in fg]
        losses_bg = [_py_max0(b) for b in bg]
        return max(losses_fg), sum(losses_fg) + sum(losses_bg)

    @staticmethod
    def _step(latents, loss, step_size):
        grad = torch.autograd.grad(loss.requires_grad_(True), [latents], retain_graph=True)[0]
        return latents - step_size * grad

    def _refine(self, latents, t, loss_fg, threshold, step_size, max_iters):
        iteration = 0
        target = max(0, 1.0 - threshold)
        while loss_fg > target:
            iteration += 1
            latents = latents.clone().detach().requires_grad_(True)
            fg, bg = self._forward_terms(latents, t)
            loss_fg, _ = self._loss(fg, bg)
            if loss_fg != 0:
                latents = self._step(latents, loss_fg, step_size)
            if iteration >= max_iters:
                break
        self.refinement_iterations.append(iteration)
        latents = latents.clone().detach().requires_grad_(True)
        fg, _ = self._forward_terms(latents, t)
        return latents, fg

    # ---------------------------------------------------------------- the loop

    @torch.no_grad()
    def __call__(self, latents, num_inference_steps, guidance_scale, window_size, step_scale=20.0,
                 scale_range=(1.0, 0.5), max_iter_to_alter=25, thresholds=None, max_refinement_steps=20,
                 video_latents=None, masks=None, generator=None):
        """latents (1, C, F, h, w) → the final latents. `masks` (1, 1, F, h, w) and `video_latents`
        switch IRJS on; its noise is drawn from `generator` per window, as reatco draws it."""
        thresholds = {} if thresholds is None else thresholds
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps)
        scales = np.linspace(scale_range[0], scale_range[1], len(scheduler.timesteps))
        n_frames = latents.shape[2]
        views = [(s, s + window_size) for s in range((n_frames - window_size) // 1 + 1)]
        original = dict(self.unet.attn_processors)
        self.unet.set_attn_processor({k: (self.recorder if k.endswith("attn2.processor") else v) for k, v in original.items()})
        try:
            for i, t in enumerate(scheduler.timesteps):
                value, count = torch.zeros_like(latents), torch.zeros_like(latents)
                step_size = step_scale * np.sqrt(scales[i])
                for start, end in views:
                    view = latents[:, :, start:end]
                    with torch.enable_grad():
                        view = view.clone().detach().requires_grad_(True)
                        fg, bg = self._forward_terms(view, t)
                        loss_fg, loss = self._loss(fg, bg)
                        if i in thresholds and loss_fg > 1.0 - thresholds[i]:
                            view, fg = self._refine(view, t, loss_fg, thresholds[i], step_size, max_refinement_steps)
                        if i < max_iter_to_alter:
                            _, loss = self._loss(fg, bg)
                            if loss != 0:
                                view = self._step(view, loss, step_size)
                    view = view.detach()
                    model_input = scheduler.scale_model_input(torch.cat([view] * 2), t)
                    if masks is not None:
                        m = masks[:, :, start:end]
                        source = video_latents[:, :, start:end]
                        noise = torch.randn(source.shape, generator=generator, device="cpu").to(source)
                        noisy = scheduler.add_noise(source, noise, t)
                        model_input = model_input * m + (1 - m) * torch.cat([noisy] * 2)
                    noise_pred = self.unet(model_input, t, encoder_hidden_states=self.text_embeddings).sample
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                    if masks is not None:
                        view = view * m + (1 - m) * noisy
                    value[:, :, start:end] += scheduler.step(noise_pred, t, view, eta=0.0).prev_sample
                    count[:, :, start:end] += 1
                latents = torch.where(count > 0, value / count, value)
        finally:
            self.unet.set_attn_processor(original)
        return latents


def official_box_mask(boxes, height, width, latent_h, latent_w, n_frames):
    """The official IRJS mask: each box rounded to the latent grid, union, (1, 1, F, h, w)."""
    masks = torch.zeros(1, 1, n_frames, latent_h, latent_w)
    for box in boxes:
        x1, x2 = (max(round(b / (width / latent_w)), 0) for b in (box[0], box[2]))
        y1, y2 = (max(round(b / (height / latent_h)), 0) for b in (box[1], box[3]))
        masks[:, :, :, y1:y2, x1:x2] = 1
    return masks
