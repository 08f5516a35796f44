"""What an interactive editor needs from the library (reatco/app.py is a thin UI over this):
candidate words of a prompt, a config built from drawn keyframes or source words, region previews
on every frame, and runs that reuse the loaded model, the tuned UNet and the inversion.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config_files import config_from_dict
from .regions.region import draw_regions
from .runner import EditRunner
from .schema import config_to_dict

_STOP = {"a", "an", "the", "and", "on", "in", "of", "with", "to", "at", "by", "is", "are"}


def candidate_words(prompt: str) -> list[str]:
    """Words of a prompt an object may be named by: each word and each pair of neighbouring words
    that are not articles or conjunctions ("green", "circle", "green circle")."""
    words = re.findall(r"[A-Za-z0-9'-]+", prompt)
    out: list[str] = []
    for i, word in enumerate(words):
        if word.lower() in _STOP:
            continue
        out.append(word)
        if i + 1 < len(words) and words[i + 1].lower() not in _STOP:
            out.append(f"{word} {words[i + 1]}")
    return list(dict.fromkeys(out))


@dataclass
class ObjectDraft:
    """One object as an editor holds it: a word of the edited prompt and either keyframed boxes
    (working-resolution pixels) or a source-prompt word to find it by."""

    word: str = ""
    keyframes: dict[int, list[float]] = field(default_factory=dict)
    source_word: str | None = None
    instance: Any = "largest"
    margin: float = 0.0

    def as_config(self) -> dict:
        if self.source_word:
            return {"word": self.word, "source": {"word": self.source_word, "instance": self.instance, "margin": self.margin}}
        if len(self.keyframes) == 1:
            return {"word": self.word, "box": list(next(iter(self.keyframes.values())))}
        return {"word": self.word, "boxes": {int(k): list(v) for k, v in sorted(self.keyframes.items())}}


def drafts_from_config(cfg) -> list[ObjectDraft]:
    """The first edit's objects as drafts (typed boxes become keyframes)."""
    if not cfg.edits:
        return []
    drafts = []
    for obj in cfg.edits[0].objects:
        draft = ObjectDraft(word=obj.word)
        if obj.box is not None:
            draft.keyframes = {0: list(obj.box)}
        elif isinstance(obj.boxes, dict):
            draft.keyframes = {int(k): list(v) for k, v in obj.boxes.items()}
        elif isinstance(obj.boxes, list):
            draft.keyframes = {f: list(b) for f, b in enumerate(obj.boxes)}
        elif obj.source is not None and obj.source.word:
            draft.source_word, draft.instance, draft.margin = obj.source.word, obj.source.instance, obj.source.margin
        drafts.append(draft)
    return drafts


def build_config(base, video_path: str, source_prompt: str, edit_prompt: str, drafts: list[ObjectDraft],
                 name: str = "app"):
    """A validated config: `base` (a config) with the clip, the prompts and one edit of `drafts`
    (objects without a word are left out; no edit when none has one)."""
    raw = config_to_dict(base)
    raw["video"]["path"] = video_path
    raw["video"]["prompt"] = source_prompt
    objects = [d.as_config() for d in drafts if d.word]
    raw["edits"] = [{"name": name, "prompt": edit_prompt, "objects": objects}] if objects else []
    return config_from_dict(raw)


def _runner_key(cfg) -> str:
    """Everything that decides the model, the tuning and the inversion: a runner is reused while it
    is the same (edits and output names do not matter)."""
    raw = config_to_dict(cfg)
    for key in ("edits", "save_attention", "save_gif", "save_frames"):
        raw.pop(key, None)
    return json.dumps(raw, sort_keys=True, default=str)


class EditSession:
    """Holds one EditRunner (model, source clip, tuned UNet, inversion) for as long as the settings
    that produced them stay the same."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self._key: str | None = None
        self.runner: EditRunner | None = None

    def runner_for(self, cfg) -> EditRunner:
        key = _runner_key(cfg)
        if self.runner is None or key != self._key:
            self.runner, self._key = EditRunner(cfg, progress=self.progress), key
        self.runner.cfg = cfg  # the same model and clip; this config's edits
        return self.runner

    def frames(self, cfg) -> np.ndarray:
        """(F, H, W, 3) uint8 source frames at the working size."""
        return self.runner_for(cfg).source_frames()

    def preview(self, cfg) -> list[np.ndarray]:
        """Every frame with the regions drawn (regions from the source are found first)."""
        runner = self.runner_for(cfg)
        prepared = runner.prepare()[0]
        regions = runner.resolve_regions(prepared)
        frames = runner.source_frames()
        words = [o.word for o in prepared.edit.objects]
        return [draw_regions(upscale(frame, 4), regions, words, frame=f) for f, frame in enumerate(frames)]

    def run(self, cfg) -> dict:
        """Run the config's edit; returns the output folder, the edited frames and a strip with
        one column per frame and rows source, edited, and each word's attention."""
        from .visualize import region_boxes, word_overlays

        runner = self.runner_for(cfg)
        prepared = runner.prepare()[0]
        result = runner.run(prepared)
        source = runner.source_frames()
        words = [o.word for o in prepared.edit.objects]
        videos = [source, result.frames]
        if result.attention is not None:  # one row per word, all on one colour scale
            boxes = region_boxes(prepared.regions, len(result.frames))
            videos += word_overlays(result.frames, result.attention, boxes)
        rows = [np.concatenate([upscale(f, 2) for f in video], axis=1) for video in videos]
        return {"out_dir": result.out_dir, "frames": result.frames, "strip": np.concatenate(rows, axis=0),
                "files": sorted(str(p) for p in Path(result.out_dir).iterdir() if p.is_file())}


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so small frames (the shapes world's 64 px) can be seen."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def scale_box(box, factor: float) -> list[float]:
    return [float(v) * factor for v in box]
