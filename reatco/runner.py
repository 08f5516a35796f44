"""Running the edits of one config: validate, tune (cached), invert (cached), edit, write outputs.

`scripts/edit.py` and `scripts/eval_loveu.py` are thin wrappers around `EditRunner`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arguments import pipeline_arguments
from .config import edit_config
from .config_files import save_config
from .environment import package_versions, resolve_device
from .errors import ConfigError, check_finite
from .files import ResultExistsError, new_partial_dir, remove_quietly, replace_dir
from .fingerprint import MODEL_PARTS, cache_root, digest_path, digest_tensor
from .backbones.inversion import inversion_cache_key, load_or_invert
from .rad.losses import word_labels
from .regions.files import write_regions
from .regions.region import Region
from .regions.objects import EditObject, object_region
from .tokens import (check_edit_prompt, load_tokenizer, resolve_objects_tokens, token_table, tokenize_prompt,
                     word_token_indices)
from .video import read_video, to_uint8, write_frames, write_video

logger = logging.getLogger(__name__)


@dataclass
class PreparedEdit:
    """An edit whose words and regions were checked without loading any weights."""

    cfg: Any  # the config with this edit's overrides merged in
    edit: Any
    regions: list[Region | None]  # None: found in the source video when the edit runs (resolve_regions)
    token_indices: list[list[int]]
    token_table: str
    origins: list[str] = field(default_factory=list)  # where each region came from, for regions.json
    tokens: Any = None  # the edit prompt's PromptTokens: tokenized once, here, for the whole edit

    def objects(self) -> list:
        """The edit's objects resolved (regions found: after EditRunner.resolve_regions)."""
        return [EditObject(o.word, o.occurrence, region, tuple(idx))
                for o, region, idx in zip(self.edit.objects, self.regions, self.token_indices)]


@dataclass
class EditResult:
    name: str
    frames: np.ndarray  # (F, H, W, 3) uint8
    out_dir: Path | None
    report: dict = field(default_factory=dict)
    attention: Any = None  # (J, F, h, w) per-word attention when cfg.save_attention


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def attention_steps(recorded_steps: int, steps: int) -> list[int]:
    """The denoising steps attention.mp4 shows on their own (besides the mean): the first, the
    middle and the last of the steps that record attention (the RAD steps)."""
    last = min(recorded_steps, steps) - 1
    return sorted({0, last // 2, last}) if last >= 0 else []


def source_origin(src) -> str:
    """A short description of a `source:` region, for regions.json."""
    if getattr(src, "tracker", None):
        from .regions.trackers import tracker_model

        prompt = f"query {src.query!r}" if src.query else (f"box {list(src.box)}" if src.box is not None else f"point {list(src.point)}") + f" on frame {src.frame}"
        what = f"tracker {src.tracker} ({tracker_model(src)}) {prompt}"
    elif src.detector:
        what = f"detector {src.detector} query {src.query!r}"
    else:
        what = f"attention of source word {src.word!r}"
    return f"source: {what}, instance {src.instance}" + (f", margin {src.margin:g} px" if src.margin else "")


class EditRunner:
    """Holds one config's model, source video and inversion; runs its edits one by one."""

    def __init__(self, cfg, progress: bool = True, overwrite: bool = True):
        self.cfg = cfg
        self.progress = progress
        # False (scripts/edit.py without --overwrite): a finished edit folder is never replaced,
        # checked at the moment of replacing (a concurrent run may have finished meanwhile)
        self.overwrite = overwrite
        self.device = resolve_device(cfg.model.device)
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            logger.warning("model.dtype is %s on a CPU: CPU kernels for half precision are slow (an edit ran 13x "
                           "slower than in float32) and less exact; use model.dtype: float32 (or auto) on a CPU",
                           str(self.dtype).replace("torch.", ""))
        self.timings: dict[str, float] = {}
        self._tokenizer = None
        self._video: torch.Tensor | None = None
        self._pipe = None
        self._source: tuple[torch.Tensor, torch.Tensor] | None = None
        self._native_size: tuple[int, int] | None = None
        self._found: dict[str, Region] = {}  # regions found in the source video, by their settings
        # how a `source: {tracker: …}` tracker is made: region_trackers.load_tracker, or a stand-in
        self.make_tracker = None
        self._tune_key: tuple[str, dict] | None = None
        self._model_digest: str | None = None
        # which UNet edits: {"source": cache | tuned | model.tuned_unet | inflated, "path", "key"}
        self.unet_info: dict | None = None

    # ------------------------------------------------------------------ validation (no weights)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.model.pretrained)
        return self._tokenizer

    def prepare(self, only: str | None = None, dry_run: bool = False) -> list[PreparedEdit]:
        """Check every edit's words and regions; raises ConfigError before anything is loaded.
        `dry_run`: only a dry run follows (the UNet's checks are the same either way; Wan's runner
        goes on without a hub id's files out of reach)."""
        cfg = self.cfg
        edits = list(cfg.edits)
        if not edits:
            raise ConfigError("edits", "is empty: there is nothing to edit; add an edit (name, prompt, objects)")
        if only is not None:
            names = [e.name for e in edits]
            if only not in names:
                raise ConfigError("--only", f"no edit named {only!r}; the config has {names}")
            edits = [e for e in edits if e.name == only]
        prepared = []
        cell = cfg.model.attention_cell_px
        for k, edit in enumerate(cfg.edits):
            if edit not in edits:
                continue
            field_prefix = f"edits[{k}]"
            regions, origins = [], []
            for j, obj in enumerate(edit.objects):
                where = f"{field_prefix}.objects[{j}]"
                if obj.source is not None:  # found later, with the model; the word is checked now
                    src = obj.source
                    if src.tracker:  # its frame, box or point against the clip as read
                        from .regions.trackers import check_tracker_prompt

                        check_tracker_prompt(src, self.source_video().shape[0], cfg.video.height, cfg.video.width, f"{where}.source")
                    elif not src.detector:
                        word_token_indices(self.tokenizer, cfg.video.prompt, src.word, src.occurrence, field=f"{where}.source.word")
                    regions.append(None)
                    origins.append(source_origin(src))
                    continue
                native = self.native_size() if obj.boxes_file is not None else None
                regions.append(object_region(obj, cfg.video.n_frames, cfg.video.height, cfg.video.width, cell, field=where,
                                             start_frame=cfg.video.start_frame, frame_stride=cfg.video.frame_stride,
                                             native_size=native))
                origins.append(f"boxes_file {obj.boxes_file}" if obj.boxes_file else regions[-1].kind)
            tokens = tokenize_prompt(self.tokenizer, edit.prompt)
            indices = resolve_objects_tokens(self.tokenizer, tokens, edit.objects, f"{field_prefix}.objects")
            merged = edit_config(cfg, edit)
            check_edit_prompt(tokens, len(indices), merged.rad, f"{field_prefix}.prompt")
            prepared.append(PreparedEdit(merged, edit, regions, indices, token_table(self.tokenizer, tokens),
                                         origins, tokens))
        return prepared

    def forget_source(self) -> None:
        """Drop what was read from the source clip (frames, latents and inversion, found regions,
        its size), keeping the model: the clip changed on disk. The caches are keyed by content,
        so the next edit reads it again and inverts it anew."""
        self._video = self._source = self._native_size = self._tune_key = None
        self._found = {}

    def native_size(self) -> tuple[int, int]:
        """(width, height) of the source video's own frames: the unit of boxes files that do not state theirs."""
        if self._native_size is None:
            from .video import native_frame_size

            self._native_size = native_frame_size(self.cfg.video.path)
        return self._native_size

    def resolve_regions(self, prepared: PreparedEdit, without_pipeline: bool = False) -> list[Region]:
        """Find the regions of the objects given as `source:` (the model's attention, a detector or
        a tracker on the source clip); found regions are kept for the other edits of this runner.
        without_pipeline: only the detector and tracker ones (run before the edit's models load, so
        that their weights are freed first)."""
        missing = [j for j, r in enumerate(prepared.regions) if r is None]
        if without_pipeline:
            missing = [j for j in missing if prepared.edit.objects[j].source.tracker or prepared.edit.objects[j].source.detector]
        if not missing:
            return prepared.regions
        from .schema import config_to_dict

        cfg = self.cfg
        k = next((i for i, e in enumerate(cfg.edits) if e.name == prepared.edit.name), 0)
        start = time.perf_counter()
        for j in missing:
            spec = prepared.edit.objects[j].source
            key = json.dumps(config_to_dict(spec), sort_keys=True)
            if key not in self._found:
                field_name = f"edits[{k}].objects[{j}].source"
                if spec.tracker:
                    from .regions.trackers import track_source_regions

                    self._found[key] = track_source_regions(self.source_frames(), [spec], [field_name], str(self.device),
                                                            cache_root(cfg), cfg.model.attention_cell_px, self.latent_cell_px(),
                                                            self.progress, self.make_tracker)[0]
                elif spec.detector:
                    from .regions.detector import detect_source_regions

                    self._found[key] = detect_source_regions(self.source_frames(), [spec], cfg.model.attention_cell_px,
                                                             str(self.device), [field_name], self.latent_cell_px())[0]
                else:
                    from .regions.finding import find_source_regions

                    pipe = self.pipeline()
                    source_latents, _ = self.source()
                    self._found[key] = find_source_regions(pipe.backbone, self.source_video().to(self.device), source_latents,
                                                           cfg.video.prompt, [spec], cfg.model.attention_cell_px, [field_name],
                                                           pipe.vae_scale_factor)[0]
            prepared.regions[j] = self._found[key]
        self.timings["find_regions"] = self.timings.get("find_regions", 0.0) + time.perf_counter() - start
        return prepared.regions


    def preflight(self) -> None:
        """Everything that can fail before a model loads: weights and detectors that cannot be
        had, the video, and (when tuning) the trainable modules and whether tune.output_dir holds a
        UNet of another setup."""
        cfg = self.cfg
        from .environment import check_model_available

        check_model_available(cfg.model.pretrained, "model.pretrained")  # seconds, before reading the clip
        for k, edit in enumerate(cfg.edits):  # detectors of found regions: loaded after the model, checked now
            for j, obj in enumerate(edit.objects):
                if obj.source is not None and obj.source.detector:
                    check_model_available(obj.source.detector, f"edits[{k}].objects[{j}].source.detector",
                                          marker="config.json", what="OWL-ViT / OWLv2 layout (config.json)")
        self.source_video()
        if not cfg.model.tuned_unet and cfg.tune.enabled:
            from .tuning import check_output_dir, check_trainable_modules, tuned_unet_dir

            check_trainable_modules(cfg.model.pretrained, cfg.tune.trainable_modules)

            key, _ = self.tune_key()
            check_output_dir(tuned_unet_dir(cfg, key), bool(cfg.tune.overwrite), key)

    def model_digest(self) -> str:
        if self._model_digest is None:
            self._model_digest = digest_path(self.cfg.model.pretrained, cache_root(self.cfg) / "file_hashes.json", only=MODEL_PARTS)
        return self._model_digest

    def tune_key(self) -> tuple[str, dict]:
        if self._tune_key is None:
            from .tuning import tune_cache_key

            self._tune_key = tune_cache_key(self.cfg, self.source_video())
        return self._tune_key

    # ------------------------------------------------------------------ heavy state, loaded once

    def source_video(self) -> torch.Tensor:
        if self._video is None:
            v = self.cfg.video
            self._video = read_video(v.path, v.height, v.width, v.n_frames, v.start_frame, v.frame_stride)
        return self._video

    def tracked(self, spec, field: str = "source"):
        """What the tracker of a `source: {tracker: …}` spec finds on the source clip (every
        instance, cached by content): region_trackers.Tracked."""
        from .regions.trackers import track_objects

        return track_objects(self.source_frames(), [spec], [field], str(self.device), cache_root(self.cfg),
                             self.progress, self.make_tracker)[0]

    def latent_cell_px(self) -> int:
        """Pixels per latent cell of the model (the VAE's downsampling), read from its VAE config
        without loading any weights."""
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.load_config(self.cfg.model.pretrained, subfolder="vae")
        return 2 ** (len(vae.get("block_out_channels", [0])) - 1)

    def source_frames(self) -> np.ndarray:
        """The source clip as (F, H, W, 3) uint8 (source_video is the VAE's [-1, 1])."""
        return to_uint8((self.source_video() + 1) / 2)

    def pipeline(self):
        if self._pipe is None:
            from .pipeline import ReAtCoPipeline

            start = time.perf_counter()
            unet = self._unet()  # may tune first: that is timed as "tune", not as loading
            try:
                # the tokenizer that checked the edits, so that their tokens serve the call as they are
                pipe = ReAtCoPipeline.from_pretrained(self.cfg.model.pretrained, unet=unet, tokenizer=self.tokenizer,
                                                      dtype=self.dtype)
            except ConfigError:
                raise
            except (OSError, ValueError, RuntimeError) as err:  # missing or damaged weights
                raise ConfigError("model.pretrained", f"cannot load {self.cfg.model.pretrained}: {str(err).splitlines()[0]}") from err
            pipe.to(self.device)
            # Frame by frame through the VAE: its memory no longer grows with the clip (decoding a
            # whole clip at once adds about 0.45 GB per frame at 448×768 fp16; scripts/bench_memory.py).
            pipe.enable_vae_slicing()
            pipe.set_progress_bar_config(disable=not self.progress)
            self._pipe = pipe
            self.timings["load"] = time.perf_counter() - start - self.timings.get("tune", 0.0)
        return self._pipe

    def _unet(self):
        """The UNet to edit with: the configured tuned one, a cached/new tuning, or plain inflation."""
        cfg = self.cfg
        if cfg.model.tuned_unet:
            from .tuning import load_tuned

            self.unet_info = {"source": "model.tuned_unet", "path": str(cfg.model.tuned_unet)}
            return load_tuned(cfg.model.tuned_unet, torch_dtype=self.dtype)
        if cfg.tune.enabled:
            from .tuning import load_tuned, tune_from_config

            key, parts = self.tune_key()
            start = time.perf_counter()
            result = tune_from_config(cfg, video=self.source_video(), progress=self.progress, key=key, parts=parts)
            if result.reused:
                logger.info("using the UNet tuned with this exact setup in %s", result.folder)
                from .backbones.tav.unet import cast_dtype

                unet = cast_dtype(result.unet, self.dtype) if self.dtype != torch.float32 else result.unet
            else:
                self.timings["tune"] = time.perf_counter() - start
                unet = load_tuned(result.folder, torch_dtype=self.dtype, field="tune.output_dir")
            self.unet_info = {"source": "cache" if result.reused else "tuned", "path": str(result.folder), "key": key}
            return unet
        logger.info(  # the default: no tuning holds the shapes benchmark's gates
            "model.tuned_unet is not set and tune.enabled is false: editing with the plain inflated UNet "
            "(no Tune-A-Video tuning on the source video)"
        )
        self.unet_info = {"source": "inflated", "model": str(cfg.model.pretrained)}
        return None

    def _unet_identity(self) -> str | None:
        info = self.unet_info or {}
        if info.get("source") == "model.tuned_unet":
            return digest_path(info["path"], cache_root(self.cfg) / "file_hashes.json")
        return info.get("key") or "inflated"

    def inversion_key(self) -> str:
        """Hash of everything the trajectory depends on: the model's files, the UNet (tuning key or
        folder content), the frames as read, steps, prompt, guidance, seed, dtype and autocast."""
        cfg = self.cfg
        return inversion_cache_key(
            model=self.model_digest(),
            unet=self._unet_identity(),
            video=digest_tensor(self.source_video()),
            frames=[cfg.video.start_frame, cfg.video.frame_stride, cfg.video.n_frames],
            size=[cfg.video.height, cfg.video.width],
            steps=cfg.inversion.steps or cfg.sampling.steps,
            prompt=cfg.inversion.prompt,
            guidance=cfg.inversion.guidance_scale,
            seed=cfg.sampling.seed,
            dtype=str(self.dtype),
            autocast=cfg.model.autocast,
        )

    def autocast(self):
        """model.autocast: bf16 → bfloat16 autocast on the run's device (weights stay in model.dtype)."""
        if self.cfg.model.autocast == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def source(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled source latents V_0 (1, C, F, h, w) and the DDIM-inversion trajectory (cached)."""
        if self._source is None:
            pipe = self.pipeline()
            cfg = self.cfg
            steps = cfg.inversion.steps or cfg.sampling.steps
            key = self.inversion_key()
            cache_dir = cfg.inversion.cache_dir or cache_root(cfg) / "inversion"

            def invert():
                start = time.perf_counter()
                from .pipeline import encode_generator

                # derived from the edit's generator as pipe(video=…, generator=…) derives it: one seed, one edit
                generator = encode_generator(torch.Generator("cpu").manual_seed(cfg.sampling.seed))
                with self.autocast():
                    latents = pipe.encode_video(self.source_video(), generator)
                    trajectory = pipe.invert(latents, cfg.inversion.prompt, steps, cfg.inversion.guidance_scale)
                self.timings["invert"] = time.perf_counter() - start
                return trajectory

            trajectory = load_or_invert(cache_dir, key, invert).to(self.device, self.dtype)
            self._source = (trajectory[0], trajectory)
        return self._source

    # ------------------------------------------------------------------ editing

    def run(self, prepared: PreparedEdit, out_dir: str | os.PathLike | None = None, write: bool = True) -> EditResult:
        cfg = prepared.cfg
        self.resolve_regions(prepared, without_pipeline=True)  # trackers and detectors: freed before the models load
        pipe = self.pipeline()
        source_latents, trajectory = self.source()
        self.resolve_regions(prepared)
        if trajectory.shape[0] != cfg.sampling.steps + 1:
            raise ConfigError("inversion.steps", f"must equal sampling.steps ({cfg.sampling.steps}) so the trajectory pairs with the sampling steps")
        # the objects resolved once here (the pipeline takes them as they are), the cached source
        arguments = pipeline_arguments(cfg, prepared.edit, objects=prepared.objects(), source=(source_latents, trajectory),
                                       prompt=prepared.tokens)
        start = time.perf_counter()
        with self.autocast():
            output = pipe(**arguments, output_type="np", attention_steps=attention_steps(
                cfg.rad.max_update_steps if cfg.rad.enabled else 0, cfg.sampling.steps))
        edit_seconds = time.perf_counter() - start
        clip = output.frames[0]  # diffusers' video output: a batch of one clip
        check_finite(clip, "in the edited frames", "try model.dtype=float32 or a smaller rad.step_size")
        frames = (clip * 255).round().astype(np.uint8)
        return self.finish(prepared, frames, output, edit_seconds, {"unet": self.unet_info}, write, out_dir)

    def finish(self, prepared: PreparedEdit, frames: np.ndarray, output, edit_seconds: float, backbone: dict,
               write: bool = True, out_dir=None) -> EditResult:
        """One edit's result: its report (what ran, on what, how long, RAD's losses; `backbone`: the
        backbone's own report fields, e.g. the UNet's tuning, Wan's blocks and frame counts) and, with
        `write`, its folder."""
        cfg = prepared.cfg
        report = {
            "edit": prepared.edit.name,
            "prompt": prepared.edit.prompt,
            "seed": cfg.sampling.seed,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            **backbone,
            "autocast": cfg.model.autocast,
            "versions": package_versions(),
            "timings_s": {**self.timings, "edit": edit_seconds, "edit_per_step": edit_seconds / cfg.sampling.steps},
            # keyed like the loss records: a repeated word's second object is "word#2"
            "token_indices": dict(zip(word_labels([o.word for o in prepared.edit.objects]), prepared.token_indices)),
            "rad_losses": output.rad_losses,
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            report["peak_gpu_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        result = EditResult(prepared.edit.name, frames, None, report, output.attention_maps)
        if write:
            result.out_dir = self.write_outputs(prepared, result, output, out_dir)
        return result

    def write_outputs(self, prepared: PreparedEdit, result: EditResult, output=None, out_dir=None) -> Path:
        """Everything goes into a folder private to this run (`.<name>.partial-XXXX/`) first and
        replaces `<name>/` only when complete; concurrent runs take turns at the replacement.
        `output`: the pipeline's output, whose attention maps (if any) become attention.mp4."""
        cfg = prepared.cfg
        final = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / prepared.edit.name
        partial = new_partial_dir(final)
        try:
            return self._write_into(prepared, result, output, partial, final)
        except BaseException:
            remove_quietly(partial)
            raise

    def _write_into(self, prepared: PreparedEdit, result: EditResult, output, partial: Path, final: Path) -> Path:
        cfg = prepared.cfg
        fps = cfg.video.fps
        write_video(result.frames, partial / "edited.mp4", fps=fps)
        if cfg.save_gif:
            write_video(result.frames, partial / "edited.gif", fps=fps)
        if cfg.save_frames:
            write_frames(result.frames, partial / "frames")
        if output is not None and output.attention_maps is not None:
            from .visualize import attention_video, region_boxes

            words = [o.word for o in prepared.edit.objects]
            columns = [(f"step {i}", maps) for i, maps in (output.attention_by_step or {}).items()]
            recorded = sorted({r["step"] for r in output.rad_losses}) or list(output.attention_by_step or [])
            mean_title = f"mean, steps {recorded[0]}-{recorded[-1]}" if recorded else "mean"
            columns.append((mean_title, output.attention_maps))
            video = attention_video(result.frames, columns, words, region_boxes(prepared.regions, len(result.frames)))
            write_video(video, partial / "attention.mp4", fps=fps)
        self.write_regions_png(prepared, partial / "regions.png")
        v = cfg.video
        write_regions(partial, prepared.regions, [o.word for o in prepared.edit.objects], prepared.origins,
                      [v.start_frame + i * v.frame_stride for i in range(v.n_frames)])
        save_config(cfg, partial / "config.yaml", relative_inputs=True)  # reruns from where it lies
        with open(partial / "report.json", "w") as f:
            json.dump(result.report, f, indent=2)
        try:
            return replace_dir(partial, final, replace_finished=self.overwrite)
        except ResultExistsError as err:
            raise ConfigError("--overwrite", f"{final} was finished by another run while this one was editing; nothing "
                              f"was replaced: this run's result is in {err.kept} (compare them, keep one, or rerun "
                              "with --overwrite)") from None

    def write_regions_png(self, prepared: PreparedEdit, path: Path) -> None:
        """Every source frame with the regions outlined, frame numbers, and a legend of the words."""
        from PIL import Image

        from .visualize import regions_sheet

        from .files import atomic_file

        frames = self.source_frames()
        known = [(r, o.word) for r, o in zip(prepared.regions, prepared.edit.objects) if r is not None]  # found ones: at run time
        with atomic_file(path, suffix=".png") as tmp:
            Image.fromarray(regions_sheet(frames, [r for r, _ in known], [w for _, w in known])).save(tmp)
