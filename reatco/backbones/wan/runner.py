"""WanEditRunner: one config's edits on a Wan model — the same YAML, outputs and report as the
UNet's EditRunner (whose video reading and output writing it reuses), with Wan's checks, model,
flow inversion (cached by content) and pipeline call.

What does not apply to Wan is refused before any weights load, naming the field: Tune-A-Video
tuning (`tune.enabled`, `model.tuned_unet`), an attention cell other than the model's token (read
from its vae/ and transformer/ configs: 16 px on Wan 2.1), guided inversion, and
`irjs.decode_statistics: source`.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch

from ...errors import ConfigError, check_finite
from ...fingerprint import digest_path, digest_tensor
from ..inversion import inversion_cache_key, load_or_invert
from ...regions.objects import EditObject
from ...runner import EditResult, EditRunner, PreparedEdit, source_origin
from . import geometry
from .backbone import check_token_cell
from .pipeline import plan_wan_edit
from .windows import latent_windows
from .words import token_table, word_positions

logger = logging.getLogger(__name__)

WAN_PARTS = ("model_index.json", "transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler")


def _model_file(pretrained: str, *parts: str) -> str:
    """A file of a Wan folder or hub id (the hub's local cache first)."""
    path = os.path.join(os.fspath(pretrained), *parts)
    if os.path.isdir(os.fspath(pretrained)):
        if not os.path.isfile(path):
            raise ConfigError("model.pretrained", f"{pretrained} has no {'/'.join(parts)}: give a Wan folder in the diffusers layout")
        return path
    from huggingface_hub import hf_hub_download

    from ...environment import hub_reachable

    try:
        try:
            return hf_hub_download(pretrained, parts[-1], subfolder="/".join(parts[:-1]) or None, local_files_only=True)
        except Exception:  # not in the local cache
            if not hub_reachable():  # the hub client retries an unreachable host for minutes
                raise OSError("the Hugging Face Hub cannot be reached (offline) and the file is not in the local cache")
            return hf_hub_download(pretrained, parts[-1], subfolder="/".join(parts[:-1]) or None)
    except Exception as err:
        raise ConfigError("model.pretrained", f"cannot read {'/'.join(parts)} of {pretrained!r} ({str(err).splitlines()[0]}); "
                                              "give a local Wan folder or a reachable hub id") from err


def _first_frames(region, n_frames: int):
    """A region found on the padded clip, for the clip's own first `n_frames` frames."""
    from ...regions.region import Region

    if region.n_frames == n_frames:
        return region
    return Region(region.kind, n_frames, region.height, region.width,
                  boxes=None if region.boxes is None else region.boxes[:n_frames],
                  pixel_masks=None if region.pixel_masks is None else region.pixel_masks[:n_frames])


class WanEditRunner(EditRunner):
    """EditRunner for a Wan model (model.backbone wan, or auto on a Wan folder)."""

    def __init__(self, cfg, progress: bool = True, overwrite: bool = True):
        super().__init__(cfg, progress, overwrite)
        self._num_layers = None
        self._geometry = None
        self.unet_info = {"source": "wan", "model": str(cfg.model.pretrained)}

    # ------------------------------------------------------------------ checks (no weights)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer_json = _model_file(self.cfg.model.pretrained, "tokenizer", "tokenizer_config.json")
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(tokenizer_json))
            except (OSError, ValueError) as err:
                raise ConfigError("model.pretrained", f"cannot load Wan's tokenizer: {str(err).splitlines()[0]}") from err
        return self._tokenizer

    @property
    def num_layers(self) -> int:
        if self._num_layers is None:
            with open(_model_file(self.cfg.model.pretrained, "transformer", "config.json")) as f:
                self._num_layers = int(json.load(f)["num_layers"])
        return self._num_layers

    @property
    def geometry(self) -> geometry.WanGeometry:
        """The model's VAE factors and patch (its token size), from vae/config.json and
        transformer/config.json: no weights."""
        if self._geometry is None:
            with open(_model_file(self.cfg.model.pretrained, "vae", "config.json")) as f:
                vae_config = json.load(f)
            with open(_model_file(self.cfg.model.pretrained, "transformer", "config.json")) as f:
                transformer_config = json.load(f)
            if not isinstance(vae_config, dict) or not isinstance(transformer_config, dict):
                raise ConfigError("model.pretrained", "vae/config.json and transformer/config.json must hold JSON objects")
            self._geometry = geometry.geometry_from_configs(vae_config, transformer_config)
        return self._geometry

    def latent_cell_px(self) -> int:
        """Pixels per latent cell: the VAE's spatial factor (its config's, no weights)."""
        return self.geometry.spatial

    def _check_settings(self, cfg, where: str = "") -> None:
        """What the UNet path has and Wan does not (yet)."""
        def field(name):
            return f"{where}.{name}" if where else name

        check_token_cell(cfg.model.attention_cell_px, self.geometry)
        if cfg.model.tuned_unet or cfg.tune.enabled:
            raise ConfigError("tune.enabled" if cfg.tune.enabled else "model.tuned_unet",
                              "Tune-A-Video tuning applies to the UNet backbone only; on Wan set tune.enabled: false and "
                              "model.tuned_unet: null")
        if cfg.inversion.guidance_scale != 1.0:
            raise ConfigError("inversion.guidance_scale", "Wan's flow inversion runs without guidance: set 1.0")
        if cfg.irjs.decode_statistics == "source":
            raise ConfigError(field("irjs.decode_statistics"), "does not apply to Wan (its causal VAE normalises with RMS "
                                                               "norms at each position: no frame statistics to borrow); use edit")

    def prepare(self, only: str | None = None) -> list[PreparedEdit]:
        from ...config import edit_config

        cfg = self.cfg
        self._check_settings(cfg)
        model_geometry = self.geometry
        # before the regions, which count frames
        geometry.check_frame_count(cfg.video.n_frames, cfg.video.pad_frames, temporal=model_geometry.temporal)
        geometry.check_size(cfg.video.height, cfg.video.width, model_geometry)
        edits = list(cfg.edits)
        if not edits:
            raise ConfigError("edits", "is empty: there is nothing to edit; add an edit (name, prompt, objects)")
        if only is not None and only not in [e.name for e in edits]:
            raise ConfigError("--only", f"no edit named {only!r}; the config has {[e.name for e in edits]}")
        v = cfg.video
        prepared = []
        for k, edit in enumerate(edits):
            if only is not None and edit.name != only:
                continue
            merged = edit_config(cfg, edit)
            self._check_settings(merged, f"edits[{k}]")
            native = self.native_size() if any(getattr(o, "boxes_file", None) for o in edit.objects) else None
            from ...regions.parsing import parse_region

            objects, found, origins = [], [], []
            for j, obj in enumerate(edit.objects):  # regions with the config's frame selection, as the UNet path parses them
                where = f"edits[{k}].objects[{j}]"
                if getattr(obj, "source", None) is not None:  # found when the edit runs; what can be checked now is
                    region = self._check_source(obj.source, f"{where}.source")
                    found.append(j)
                    origins.append(source_origin(obj.source))
                else:
                    region = parse_region(obj, v.n_frames, v.height, v.width, model_geometry.token_px, field=where,
                                          start_frame=v.start_frame, frame_stride=v.frame_stride, native_size=native)
                    origins.append(region.kind)
                objects.append({"word": obj.word, "occurrence": obj.occurrence, "region": region})
            plan = plan_wan_edit(self.tokenizer, self.num_layers, edit.prompt, objects, v.n_frames, v.height, v.width,
                                 v.pad_frames, merged.rad.blocks, field=f"edits[{k}].objects", model_geometry=model_geometry)
            regions = [None if j in found else o.region for j, o in enumerate(plan.objects)]
            item = PreparedEdit(merged, edit, regions, [list(o.token_indices) for o in plan.objects],
                                token_table(plan.tokens), origins, plan.tokens)
            item.plan = plan
            prepared.append(item)
        return prepared

    def _check_source(self, src, field: str):
        """A `source:` object's checks before any weights load (its tracker prompt against the clip,
        or its word among the source prompt's umT5 pieces), and a stand-in region of the whole frame
        for the word checks of the edit's plan (the found one replaces it in `run`)."""
        from ...regions.region import Region

        v = self.cfg.video
        if src.tracker:
            from ...regions.trackers import check_tracker_prompt

            check_tracker_prompt(src, self.source_video().shape[0], v.height, v.width, field)
        elif not src.detector:  # found in the model's own attention to the source prompt's word
            word_positions(self.tokenizer, v.prompt, src.word, src.occurrence, field=f"{field}.word")
        whole = torch.tensor([[0.0, 0.0, float(v.width), float(v.height)]], dtype=torch.float64)
        return Region("box", v.n_frames, v.height, v.width, boxes=whole)

    def resolve_regions(self, prepared: PreparedEdit, without_pipeline: bool = False) -> list:
        """As the UNet runner's; a region found by attention is found on the clip Wan encodes (padded
        to 4k + 1 frames, every pixel frame reading the latent frame that covers it) and cut back to
        the clip's own frames."""
        regions = super().resolve_regions(prepared, without_pipeline=True)  # trackers and detectors
        missing = [j for j, r in enumerate(regions) if r is None]
        if without_pipeline or not missing:
            return regions
        from ...regions.finding import find_source_regions
        from ...schema import config_to_dict

        cfg = self.cfg
        k = next((i for i, e in enumerate(cfg.edits) if e.name == prepared.edit.name), 0)
        start = time.perf_counter()
        pipe = self.pipeline()
        source_latents, _ = self.source()
        run_frames = geometry.check_frame_count(cfg.video.n_frames, cfg.video.pad_frames, temporal=self.geometry.temporal)
        clip = geometry.pad_clip(self.source_video(), run_frames).to(self.device)
        for j in missing:
            spec = prepared.edit.objects[j].source
            key = json.dumps(config_to_dict(spec), sort_keys=True)
            if key not in self._found:
                with self.autocast():
                    found = find_source_regions(pipe.backbone, clip, source_latents, cfg.video.prompt, [spec],
                                                cfg.model.attention_cell_px, [f"edits[{k}].objects[{j}].source"],
                                                self.latent_cell_px())[0]
                self._found[key] = _first_frames(found, cfg.video.n_frames)
            prepared.regions[j] = self._found[key]
        self.timings["find_regions"] = self.timings.get("find_regions", 0.0) + time.perf_counter() - start
        return prepared.regions

    def preflight(self) -> None:
        self.source_video()

    # ------------------------------------------------------------------ the model and the source

    def pipeline(self):
        if self._pipe is None:
            from .pipeline import WanReAtCoPipeline

            start = time.perf_counter()
            try:
                from ...pipeline import DTYPE_KWARG

                pipe = WanReAtCoPipeline.from_pretrained(self.cfg.model.pretrained, tokenizer=self.tokenizer,
                                                         **{DTYPE_KWARG: self.dtype})
            except ConfigError:
                raise
            except (OSError, ValueError, RuntimeError) as err:
                raise ConfigError("model.pretrained", f"cannot load {self.cfg.model.pretrained}: {str(err).splitlines()[0]}") from err
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=not self.progress)
            self._pipe = pipe
            self.timings["load"] = time.perf_counter() - start
        return self._pipe

    def model_digest(self) -> str:
        if self._model_digest is None:
            from ...fingerprint import cache_root

            self._model_digest = digest_path(self.cfg.model.pretrained, cache_root(self.cfg) / "file_hashes.json", only=WAN_PARTS)
        return self._model_digest

    def inversion_prompt(self) -> str:
        """Wan inverts with the source prompt: inversion.prompt, or video.prompt where that is empty."""
        return self.cfg.inversion.prompt or self.cfg.video.prompt

    def inversion_key(self) -> str:
        cfg = self.cfg
        windows = self.latent_windows()
        return inversion_cache_key(
            backbone="wan", model=self.model_digest(), video=digest_tensor(self.source_video()),
            frames=[cfg.video.start_frame, cfg.video.frame_stride, cfg.video.n_frames, cfg.video.pad_frames],
            size=[cfg.video.height, cfg.video.width], steps=cfg.sampling.steps, prompt=self.inversion_prompt(),
            fixed_point_iters=cfg.inversion.fixed_point_iters, dtype=str(self.dtype), autocast=cfg.model.autocast,
            **({"windows": windows} if len(windows) > 1 else {}))  # one window: the keys (and caches) of before

    def latent_windows(self) -> list[list[int]]:
        """The windows of latent frames of the config's `window` section (the inversion's: per edit
        windows may differ, the source is inverted once with the top-level ones)."""
        cfg = self.cfg
        run_frames = geometry.check_frame_count(cfg.video.n_frames, cfg.video.pad_frames, temporal=self.geometry.temporal)
        return latent_windows(run_frames, cfg.window.size, cfg.window.stride, self.geometry.temporal)

    def source(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised source latents (1, C, latent frames, h, w) and their flow inversion (cached)."""
        if self._source is None:
            pipe = self.pipeline()
            cfg = self.cfg
            from ...fingerprint import cache_root

            cache_dir = cfg.inversion.cache_dir or cache_root(cfg) / "inversion"
            run_frames = geometry.check_frame_count(cfg.video.n_frames, cfg.video.pad_frames, temporal=self.geometry.temporal)

            def invert():
                start = time.perf_counter()
                with self.autocast():
                    latents = pipe.encode_video(geometry.pad_clip(self.source_video(), run_frames))
                    embeds = pipe.backbone.encode_prompt(self.inversion_prompt())  # as the edit's call encodes
                    trajectory = pipe.invert(latents, embeds, cfg.sampling.steps, cfg.inversion.fixed_point_iters,
                                             windows=self.latent_windows())
                self.timings["invert"] = time.perf_counter() - start
                return trajectory

            trajectory = load_or_invert(cache_dir, self.inversion_key(), invert).to(self.device)
            self._source = (trajectory[0], trajectory)
        return self._source

    # ------------------------------------------------------------------ editing

    def run(self, prepared: PreparedEdit, out_dir=None, write: bool = True) -> EditResult:
        cfg = prepared.cfg
        self.resolve_regions(prepared, without_pipeline=True)  # trackers and detectors: freed before the model loads
        pipe = self.pipeline()
        source_latents, trajectory = self.source()
        self.resolve_regions(prepared)
        objects = [EditObject(o.word, o.occurrence, region, o.token_indices)  # the found regions in place of the stand-ins
                   for o, region in zip(prepared.plan.objects, prepared.regions)]
        s = cfg.sampling
        start = time.perf_counter()
        with self.autocast():
            output = pipe(
                prepared.edit.prompt, objects=objects, source_latents=source_latents,
                inversion_trajectory=trajectory, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                negative_prompt=s.negative_prompt, generator=torch.Generator().manual_seed(s.seed),
                start_in_regions=s.start_in_regions, rad=cfg.rad, irjs=cfg.irjs, window=cfg.window, rad_blocks=cfg.rad.blocks,
                n_frames=cfg.video.n_frames, pad_frames=cfg.video.pad_frames, height=cfg.video.height,
                width=cfg.video.width, return_attention=cfg.save_attention, output_type="np")
        edit_seconds = time.perf_counter() - start
        check_finite(output.frames, "in the edited frames", "try model.dtype=float32 or a smaller rad.step_size")
        frames = (output.frames[0] * 255).round().astype(np.uint8)  # diffusers' video output: a batch of one clip
        if output.attention_maps is not None:  # latent frames → the pixel frames each covers
            index = geometry.latent_frame_index(prepared.plan.run_frames, self.geometry.temporal)[: cfg.video.n_frames]
            output.attention_maps = output.attention_maps[:, index]
        return self.finish(prepared, frames, output, edit_seconds, {
            "backbone": "wan", "model": str(cfg.model.pretrained), "rad_blocks": prepared.plan.rad_blocks,
            "frames": {"clip": cfg.video.n_frames, "run": prepared.plan.run_frames},
            "latent_windows": latent_windows(prepared.plan.run_frames, cfg.window.size, cfg.window.stride,
                                             self.geometry.temporal)}, write, out_dir)


__all__ = ["WanEditRunner", "WAN_PARTS"]
