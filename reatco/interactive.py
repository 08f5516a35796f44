"""What an interactive editor needs from the library (reatco/app.py is a thin UI over this):
candidate words of a prompt, a config built from drawn keyframes or source words, region previews
on every frame, and runs that reuse the loaded model, the tuned UNet and the inversion.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config_files import config_from_dict
from .errors import ConfigError
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
    (working-resolution pixels), a source-prompt word to find it by, or a tracker's prompt: a box
    on one frame (sam2) or a word whose instances it tracks (sam3, `source_word` is the query)."""

    word: str = ""
    keyframes: dict[int, list[float]] = field(default_factory=dict)
    source_word: str | None = None
    instance: Any = "largest"
    margin: float = 0.0
    tracker: str | None = None  # sam2 | sam3
    track_box: list[float] | None = None  # sam2: the box drawn on `track_frame`
    track_frame: int = 0
    tracker_model: str | None = None  # weights (hub id or folder); None: the tracker's default

    def as_config(self) -> dict:
        if self.tracker == "sam2" and self.track_box is not None:
            return {"word": self.word, "source": {"tracker": "sam2", "box": list(self.track_box), "frame": int(self.track_frame),
                                                  "model": self.tracker_model, "margin": self.margin}}
        if self.tracker == "sam3" and self.source_word:
            return {"word": self.word, "source": {"tracker": "sam3", "query": self.source_word, "instance": self.instance,
                                                  "model": self.tracker_model, "margin": self.margin}}
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
        elif obj.source is not None and obj.source.tracker:
            src = obj.source
            draft.tracker, draft.tracker_model, draft.margin, draft.instance = src.tracker, src.model, src.margin, src.instance
            draft.track_box, draft.track_frame = (list(src.box) if src.box is not None else None), src.frame
            draft.source_word = src.query
        elif obj.source is not None and obj.source.word:
            draft.source_word, draft.instance, draft.margin = obj.source.word, obj.source.instance, obj.source.margin
        drafts.append(draft)
    return drafts


def build_config(base, video_path: str, source_prompt: str, edit_prompt: str, drafts: list[ObjectDraft],
                 name: str = "app"):
    """A validated config: `base` (a config) with the clip, the prompts and one edit of `drafts`
    (objects without a word are left out; no edit when none has one)."""
    raw = config_to_dict(base)
    raw["video"]["path"] = uploaded_path(video_path) or video_path
    raw["video"]["prompt"] = source_prompt
    objects = [d.as_config() for d in drafts if d.word]
    raw["edits"] = [{"name": name, "prompt": edit_prompt, "objects": objects}] if objects else []
    return config_from_dict(raw)


def uploaded_path(value) -> str | None:
    """What a Gradio upload gives (a NamedString — a str subclass OmegaConf refuses —, a file
    object with .name, a {"path": …} dict, or a list of them for several frames) → a plain path;
    several uploaded images are linked into one folder of frames, in the order of their names."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, (list, tuple)):
        paths = [uploaded_path(v) for v in value]
        paths = [p for p in paths if p]
        if len(paths) == 1:
            return paths[0]
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="reatco-upload-"))
        for k, p in enumerate(sorted(paths, key=lambda q: Path(q).name)):
            (folder / f"{k:05d}{Path(p).suffix.lower()}").symlink_to(Path(p).resolve())
        return str(folder)
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    elif not isinstance(value, (str, os.PathLike)) and hasattr(value, "name"):
        value = value.name
    return None if value is None else "".join(os.fspath(value))  # "".join: a plain str, never the subclass


def clip_stamp(path) -> list:
    """Size, mtime and inode of the clip's file (or of every frame of its folder): a clip changed
    on disk gives another stamp, so the session reads and inverts it again."""
    p = Path(os.fspath(path))
    try:
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        return [[f.name, *(lambda st: (st.st_size, st.st_mtime_ns, st.st_ino))(f.stat())] for f in files if f.is_file()]
    except OSError:
        return []


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
        self._clip: list | None = None
        self.runner: EditRunner | None = None

    def runner_for(self, cfg) -> EditRunner:
        key, clip = _runner_key(cfg), clip_stamp(cfg.video.path)
        tuned_on_clip = cfg.tune.enabled and not cfg.model.tuned_unet  # its UNet depends on the frames
        if self.runner is None or key != self._key or (clip != self._clip and tuned_on_clip):
            self.runner, self._key = EditRunner(cfg, progress=self.progress), key
        elif clip != self._clip:  # the clip changed on disk: read, encode and invert it again, keep the model
            self.runner.forget_source()
        self._clip = clip
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

    def instances(self, cfg, index: int) -> list[tuple[np.ndarray, str]]:
        """Every instance the tracker of object `index` (a sam3 word) finds, as `instance: k` counts
        them: for each, the frame where it is largest with its mask outlined, captioned "k (score)"."""
        from .regions.trackers import ranked_instances

        runner = self.runner_for(cfg)
        prepared = runner.prepare()[0]
        spec = prepared.edit.objects[index].source
        if spec is None or not spec.tracker:
            raise ConfigError(f"edits[0].objects[{index}].source.tracker", "this object's region is not tracked; choose a tracker")
        tracked = runner.tracked(spec, f"edits[0].objects[{index}].source")
        frames = runner.source_frames()
        out = []
        for k, track in enumerate(ranked_instances(tracked, spec), 1):
            seen = [i for i in track if i is not None]
            best = max(seen, key=lambda i: i.area)
            image = upscale(frames[best.frame], 4).copy()
            edge = np.repeat(np.repeat(best.mask, 4, 0), 4, 1)
            edge = edge & ~np.pad(edge, 1)[2:, 1:-1] | edge & ~np.pad(edge, 1)[:-2, 1:-1] | \
                edge & ~np.pad(edge, 1)[1:-1, 2:] | edge & ~np.pad(edge, 1)[1:-1, :-2]
            image[edge] = (255, 0, 255)
            out.append((image, f"{k} (score {best.score:.2f}, frame {best.frame})"))
        return out

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
