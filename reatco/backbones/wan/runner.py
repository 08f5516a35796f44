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
from .backbone import check_token_cell, resolve_rad_blocks
from .known_models import known_wan_model
from .pipeline import plan_wan_edit
from .windows import latent_windows
from .words import find_word_without_tokenizer, token_table, word_positions, words_table

logger = logging.getLogger(__name__)

WAN_PARTS = ("model_index.json", "transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelFilesOutOfReach(ConfigError):
    """A hub id's file that is neither in the local Hugging Face cache nor downloadable (no network):
    the dry run may go on with what can be checked without it; a run stops here."""


def _model_file(pretrained: str, *parts: str, hub_reachable=None) -> str:
    """A file of a Wan folder or hub id (the hub's local cache first). `hub_reachable`: the probe
    (environment.hub_reachable, or a runner's answer kept from its first probe)."""
    path = os.path.join(os.fspath(pretrained), *parts)
    if os.path.isdir(os.fspath(pretrained)):
        if not os.path.isfile(path):
            raise ConfigError("model.pretrained", f"{pretrained} has no {'/'.join(parts)}: give a Wan folder in the diffusers layout")
        return path
    from huggingface_hub import hf_hub_download

    if hub_reachable is None:
        from ...environment import hub_reachable

    def fail(reason: str, error_class=ConfigError):
        return error_class("model.pretrained", f"cannot read {'/'.join(parts)} of {pretrained!r} ({reason}); "
                                               "give a local Wan folder or a reachable hub id")

    try:
        return hf_hub_download(pretrained, parts[-1], subfolder="/".join(parts[:-1]) or None, local_files_only=True)
    except Exception:  # not in the local cache
        pass
    if not hub_reachable():  # the hub client retries an unreachable host for minutes
        raise fail("the Hugging Face Hub cannot be reached (offline) and the file is not in the local cache",
                   ModelFilesOutOfReach)
    try:
        return hf_hub_download(pretrained, parts[-1], subfolder="/".join(parts[:-1]) or None)
    except Exception as err:
        raise fail(str(err).splitlines()[0]) from err


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
        self._hub_answer: bool | None = None  # the hub probe's answer, asked once
        # a dry run (prepare(dry_run=True)) goes on without what a hub id out of reach cannot give:
        # the released model's known architecture for its configs, the words checked without umT5
        self._dry_run = False
        self._stand_in = None  # the KnownWanModel whose facts stand in for the configs
        self._check_tokenizer = None  # the tokenizer prepare checks the words with (None: the text alone)
        self.unet_info = {"source": "wan", "model": str(cfg.model.pretrained)}

    # ------------------------------------------------------------------ checks (no weights)

    def _hub_reachable(self) -> bool:
        if self._hub_answer is None:
            from ...environment import hub_reachable

            self._hub_answer = hub_reachable()
        return self._hub_answer

    def _model_file(self, *parts: str) -> str:
        return _model_file(self.cfg.model.pretrained, *parts, hub_reachable=self._hub_reachable)

    def _known_architecture(self, err: ModelFilesOutOfReach):
        """A dry run's stand-in for the configs of a released checkpoint out of reach (known_models.py);
        anything else (a run, another hub id) stops with `err`."""
        known = known_wan_model(self.cfg.model.pretrained)
        if not self._dry_run or known is None:
            raise err
        if self._stand_in is None:
            logger.warning("model.pretrained: %s's configs are neither local nor in the Hugging Face cache and the hub "
                           "cannot be reached: the dry run checks against its published architecture (%s); a run needs "
                           "the model's files", known.hub_id, known.describe())
            self._stand_in = known
        return known

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            pretrained = self.cfg.model.pretrained
            try:
                if os.path.isdir(os.fspath(pretrained)):
                    self._tokenizer = AutoTokenizer.from_pretrained(
                        os.path.dirname(self._model_file("tokenizer", "tokenizer_config.json")))
                else:
                    self._tokenizer = AutoTokenizer.from_pretrained(self._hub_tokenizer_folder())
            except ConfigError:
                raise
            except (OSError, ValueError) as err:
                raise ConfigError("model.pretrained", f"cannot load Wan's tokenizer: {str(err).splitlines()[0]}") from err
        return self._tokenizer

    def _hub_tokenizer_folder(self) -> str:
        """A hub id's whole tokenizer/ folder (spiece.model or tokenizer.json beside its config):
        from the local cache, else downloaded (no weights)."""
        from huggingface_hub import snapshot_download

        pretrained = self.cfg.model.pretrained
        try:
            folder = os.path.join(snapshot_download(pretrained, allow_patterns=["tokenizer/*"], local_files_only=True),
                                  "tokenizer")
            if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
                return folder
        except Exception:  # not in the local cache
            pass
        if not self._hub_reachable():
            raise ModelFilesOutOfReach("model.pretrained", f"cannot read tokenizer/ of {pretrained!r} (the Hugging Face Hub "
                                                           "cannot be reached (offline) and it is not in the local cache); "
                                                           "give a local Wan folder or a reachable hub id")
        try:
            return os.path.join(snapshot_download(pretrained, allow_patterns=["tokenizer/*"]), "tokenizer")
        except Exception as err:
            raise ConfigError("model.pretrained", f"cannot read tokenizer/ of {pretrained!r} ({str(err).splitlines()[0]}); "
                                                  "give a local Wan folder or a reachable hub id") from err

    def _read_config(self, part: str) -> dict:
        with open(self._model_file(part, "config.json")) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ConfigError("model.pretrained", f"{part}/config.json must hold a JSON object")
        return config

    @property
    def num_layers(self) -> int:
        if self._num_layers is None:
            try:
                self._num_layers = int(self._read_config("transformer")["num_layers"])
            except ModelFilesOutOfReach as err:
                self._num_layers = self._known_architecture(err).num_layers
        return self._num_layers

    @property
    def geometry(self) -> geometry.WanGeometry:
        """The model's VAE factors and patch (its token size), from vae/config.json and
        transformer/config.json: no weights."""
        if self._geometry is None:
            try:
                self._geometry = geometry.geometry_from_configs(self._read_config("vae"), self._read_config("transformer"))
            except ModelFilesOutOfReach as err:
                self._geometry = self._known_architecture(err).geometry()
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

    def prepare(self, only: str | None = None, dry_run: bool = False) -> list[PreparedEdit]:
        """Every edit checked before any weights load. `dry_run`: only a dry run follows, so a hub id
        out of reach (no local folder, not in the cache, no network) does not stop it: a released
        checkpoint's published architecture stands in for its configs (known_models.py), and without
        umT5's tokenizer each word is checked against its prompt's text alone, with a WARNING that
        its pieces were not."""
        from ...config import edit_config

        cfg = self.cfg
        if self._stand_in is not None and not dry_run:  # what a dry run stood in with is no run's
            self._geometry = self._num_layers = self._stand_in = None
        self._dry_run = dry_run
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
        self._check_tokenizer = self._tokenizer_for_checks()
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
            # rad.blocks against the model's blocks, naming the config's field
            resolve_rad_blocks(merged.rad.blocks, self.num_layers, field=f"edits[{k}].rad.blocks"
                               if isinstance(edit.rad, dict) and "blocks" in edit.rad else "rad.blocks")
            if self._check_tokenizer is None:
                prepared.append(self._prepare_without_tokenizer(merged, edit, k, objects, found, origins))
                continue
            plan = plan_wan_edit(self._check_tokenizer, self.num_layers, edit.prompt, objects, v.n_frames, v.height,
                                 v.width, v.pad_frames, merged.rad.blocks, field=f"edits[{k}].objects",
                                 model_geometry=model_geometry)
            regions = [None if j in found else o.region for j, o in enumerate(plan.objects)]
            item = PreparedEdit(merged, edit, regions, [list(o.token_indices) for o in plan.objects],
                                token_table(plan.tokens), origins, plan.tokens)
            item.plan = plan
            prepared.append(item)
        return prepared

    def _tokenizer_for_checks(self):
        """The tokenizer, or None in a dry run that cannot have it (a hub id out of reach): then the
        words are checked against the prompts' text and a WARNING says what was not checked."""
        try:
            return self.tokenizer
        except ModelFilesOutOfReach:
            if not self._dry_run:
                raise
            logger.warning(
                "the words were NOT checked against umT5's pieces (model.pretrained %r: its tokenizer/ is neither a "
                "local folder nor in the Hugging Face cache, and the hub cannot be reached). Checked without the "
                "tokenizer: each object's word is a whole word of its edit's prompt, with its occurrence. For the full "
                "check give "
                "model.pretrained a local copy of the model's folder with its tokenizer/ (with model_index.json, "
                "vae/config.json and transformer/config.json it needs no weights), put tokenizer/ in the Hugging Face "
                "cache (`hf download %s --include 'tokenizer/*'` where there is a network), or run with a network",
                os.fspath(self.cfg.model.pretrained), os.fspath(self.cfg.model.pretrained))
            return None

    def _prepare_without_tokenizer(self, merged, edit, k: int, objects: list[dict], found: list[int],
                                   origins: list[str]) -> PreparedEdit:
        """A dry run's edit when umT5's tokenizer is out of reach: the regions as parsed, each word
        found among its prompt's words (find_word_without_tokenizer); no token indices, no plan."""
        matches, owner = [], {}
        for j, obj in enumerate(objects):
            where = f"edits[{k}].objects[{j}].word"
            match = find_word_without_tokenizer(edit.prompt, obj["word"], obj["occurrence"], field=where)
            if match.unchecked:
                logger.warning("%s: %s", where, match.unchecked)
            for w in match.words or ():
                if w in owner:
                    raise ConfigError(where, f"word {w} of the prompt is already edits[{k}].objects[{owner[w]}]'s; "
                                             "each object needs its own word")
                owner[w] = j
            matches.append(match)
        regions = [None if j in found else o["region"] for j, o in enumerate(objects)]
        item = PreparedEdit(merged, edit, regions, [None] * len(objects), words_table(edit.prompt, matches), origins, None)
        item.plan = None  # no run from here: run() loads the model, and stops for the tokenizer it cannot read
        return item

    def _check_source(self, src, field: str):
        """A `source:` object's checks before any weights load (its tracker prompt against the clip,
        or its word among the source prompt's umT5 pieces), and a stand-in region of the whole frame
        for the word checks of the edit's plan (the found one replaces it in `run`)."""
        from ...regions.region import Region

        v = self.cfg.video
        if src.tracker:
            from ...regions.trackers import check_tracker_prompt

            check_tracker_prompt(src, self.source_video().shape[0], v.height, v.width, field)
        elif not src.detector and self._dry_run and self._check_tokenizer is None:  # a dry run without umT5: the text alone
            match = find_word_without_tokenizer(v.prompt, src.word, src.occurrence, field=f"{field}.word")
            if match.unchecked:
                logger.warning("%s.word: %s", field, match.unchecked)
        elif not src.detector:  # found in the model's own attention to the source prompt's word
            word_positions(self._check_tokenizer or self.tokenizer, v.prompt, src.word, src.occurrence, field=f"{field}.word")
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
