"""PickScore (Kirstain et al. 2023) averaged over frames, as in the LOVEU-TGVE-2023 evaluator.

Per frame: exp(logit_scale) * <text, image> with both embeddings L2-normalised; model
`yuvalkirstain/PickScore_v1` (a CLIP-H fine-tune) with the processor of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, text truncated to 77 tokens (yuvalkirstain/PickScore
README; showlab/loveu-tgve-2023 scripts/run_eval.py). Frames are resized to 480x480 first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..environment import resolve_device
from ._cache import cached
from .clip_metrics import batched, feature_tensor
from .frames import LOVEU_SIZE, to_pil_frames

DEFAULT_PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass
class PickScorer:
    model: Any
    processor: Any
    device: str

    @torch.no_grad()
    def scores(self, images, prompt: str) -> torch.Tensor:
        """(F,) PickScore of each image for `prompt`."""
        image_inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        text_inputs = self.processor(text=prompt, padding=True, truncation=True, max_length=77,
                                     return_tensors="pt").to(self.device)
        image = torch.nn.functional.normalize(feature_tensor(self.model.get_image_features(**image_inputs)).float(), dim=-1)
        text = torch.nn.functional.normalize(feature_tensor(self.model.get_text_features(**text_inputs)).float(), dim=-1)
        return self.model.logit_scale.exp().float() * (text @ image.T)[0]


def load_pickscore(model: str = DEFAULT_PICKSCORE_MODEL, processor: str = DEFAULT_PICKSCORE_PROCESSOR,
                   device: str | None = None) -> PickScorer:
    """Load (once per process) the PickScore model and its processor, hub ids or local folders."""
    device = str(resolve_device(device, field="device"))

    def load() -> PickScorer:
        from transformers import AutoModel, AutoProcessor

        return PickScorer(AutoModel.from_pretrained(model).eval().to(device), AutoProcessor.from_pretrained(processor), device)

    return cached(("pickscore", model, processor, device), load)


def pickscore(frames, prompt: str, scorer: PickScorer | None = None, size=LOVEU_SIZE, batch_size: int = 32,
              **load_kwargs) -> float:
    """Mean over frames of PickScore(prompt, frame)."""
    scorer = scorer or load_pickscore(**load_kwargs)
    images = to_pil_frames(frames, size)
    return float(torch.cat([scorer.scores(chunk, prompt) for chunk in batched(images, batch_size)]).double().mean())
