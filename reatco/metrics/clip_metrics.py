"""CLIP textual alignment and frame consistency, as the LOVEU-TGVE-2023 evaluator computes them.

Official evaluator (showlab/loveu-tgve-2023, scripts/run_eval.py):
- text alignment: `CLIPModel(**processor(text=[prompt], images=frames)).logits_per_image`, mean
  over frames (= exp(logit_scale) * cosine; 100 * cosine for openai/clip-vit-large-patch14);
- frame consistency: cosine-similarity matrix of `get_image_features`, diagonal zeroed, sum divided
  by F * (F - 1): the mean over ordered pairs i != j. We report it raw and x100 (the leaderboard);
- every frame is first resized to 480x480 (PIL default filter); `size=None` keeps the aspect and
  leaves resizing/cropping to the CLIP processor.

Two backends: `transformers` (hub id or local folder, the default and the official one) and
`open_clip` (a model name plus a `pretrained` tag or checkpoint file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..environment import resolve_device
from ._cache import cached
from .frames import LOVEU_SIZE, to_pil_frames

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
BACKENDS = ("transformers", "open_clip")


def feature_tensor(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class ClipScorer:
    """A CLIP model behind one small interface, whatever the backend."""

    backend: str
    model: Any
    preprocess: Any  # transformers processor, or open_clip image transform
    tokenizer: Any  # open_clip tokenizer (None for transformers: the processor tokenizes)
    device: str

    @torch.no_grad()
    def image_features(self, images) -> torch.Tensor:
        """(F, D) unnormalised image embeddings."""
        if self.backend == "transformers":
            inputs = self.preprocess(images=images, return_tensors="pt").to(self.device)
            return feature_tensor(self.model.get_image_features(**inputs)).float()
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return self.model.encode_image(pixels).float()

    @torch.no_grad()
    def logits_per_image(self, images, prompt: str) -> torch.Tensor:
        """(F,) exp(logit_scale) * cos(image_f, text): CLIP's `logits_per_image` column."""
        if self.backend == "transformers":
            inputs = self.preprocess(text=[prompt], images=images, return_tensors="pt", padding=True).to(self.device)
            return self.model(**inputs).logits_per_image[:, 0].float()
        image = torch.nn.functional.normalize(self.image_features(images), dim=-1)
        text = self.model.encode_text(self.tokenizer([prompt]).to(self.device)).float()
        text = torch.nn.functional.normalize(text, dim=-1)
        return self.model.logit_scale.exp().float() * (image @ text.T)[:, 0]


def load_clip(model: str = DEFAULT_CLIP, backend: str = "transformers", pretrained: str | None = None,
              device: str | None = None) -> ClipScorer:
    """Load (once per process) a CLIP scorer by hub id or local folder / open_clip name."""
    if backend not in BACKENDS:
        from ..errors import ConfigError

        raise ConfigError("clip_backend", f"unknown backend {backend!r}; use one of {BACKENDS}")
    device = str(resolve_device(device, field="device"))
    return cached(("clip", backend, model, pretrained, device), lambda: _load(model, backend, pretrained, device))


def _load(model: str, backend: str, pretrained: str | None, device: str) -> ClipScorer:
    if backend == "transformers":
        from transformers import CLIPModel, CLIPProcessor

        net = CLIPModel.from_pretrained(model).eval().to(device)
        return ClipScorer(backend, net, CLIPProcessor.from_pretrained(model), None, device)
    import open_clip

    net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    return ClipScorer(backend, net.eval(), preprocess, open_clip.get_tokenizer(model), device)


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Mean cosine similarity over all ordered pairs i != j of the rows of `features` (F, D)."""
    n = features.shape[0]
    if n < 2:
        raise ValueError("frame consistency needs at least two frames")
    unit = torch.nn.functional.normalize(features.double(), dim=-1)
    sim = unit @ unit.T
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def batched(items: list, batch_size: int):
    """Per-frame results do not depend on the batch, so long clips go through in chunks."""
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def text_alignment(frames, prompt: str, scorer: ClipScorer | None = None, size=LOVEU_SIZE, batch_size: int = 32,
                   **load_kwargs) -> float:
    """Mean over frames of CLIP `logits_per_image` between each frame and `prompt`."""
    scorer = scorer or load_clip(**load_kwargs)
    images = to_pil_frames(frames, size)
    logits = torch.cat([scorer.logits_per_image(chunk, prompt) for chunk in batched(images, batch_size)])
    return float(logits.double().mean())


def frame_consistency(frames, scorer: ClipScorer | None = None, size=LOVEU_SIZE, batch_size: int = 32,
                      **load_kwargs) -> float:
    """Mean CLIP image-feature cosine over ordered frame pairs (raw, in [-1, 1]; x100 for the table)."""
    scorer = scorer or load_clip(**load_kwargs)
    images = to_pil_frames(frames, size)
    return mean_pairwise_cosine(torch.cat([scorer.image_features(chunk) for chunk in batched(images, batch_size)]))
