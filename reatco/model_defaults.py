"""A model folder's own reatco settings: `reatco_defaults.json` beside `model_index.json`.

A model may need settings other than the library's (Stable Diffusion's) defaults: the shipped
shapes model reads its attention on an 8 px grid, not SD's 32 px, and edits best with its
demo's RAD settings. The file holds them in the config's own sections and names:

    {"model": {"attention_cell_px": 8}, "sampling": {"guidance_scale": 10.0}, "rad": {"step_size": 50.0}}

`ReAtCoPipeline.from_pretrained` reads it (the call's arguments win over it) and so does the
config loader (the config's files and `--set` win over it; configs/base.yaml, which writes out
every library default, does not). Precedence, lowest first:
library defaults (and base.yaml) → the model's file → your config or arguments.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .config import ReAtCoConfig
from .errors import ConfigError
from .schema import check_known_keys

logger = logging.getLogger(__name__)

DEFAULTS_FILE = "reatco_defaults.json"
# What a model may set: everything that describes how to edit with it, nothing about one run.
SECTIONS = ("model", "video", "tune", "inversion", "sampling", "rad", "irjs", "window")
_NOT_A_MODEL_SETTING = {"model": ("pretrained", "tuned_unet", "device", "dtype", "autocast"), "video": ("path", "prompt")}


def _int_keys(thresholds: dict) -> dict:
    """JSON keys are strings: refinement_thresholds' step indices back to ints."""
    try:
        return {int(k): v for k, v in thresholds.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError("rad.refinement_thresholds", f"keys must be step indices, got {list(thresholds)}") from err


def check_model_defaults(defaults: Any, source: str) -> dict:
    """Validate the file's keys against the config schema; ConfigError naming the file and key."""
    if not isinstance(defaults, dict):
        raise ConfigError(source, "must hold a JSON object of config sections, e.g. {\"model\": {\"attention_cell_px\": 8}}")
    out = {}
    for section, values in defaults.items():
        if section.startswith("_"):  # "_comment", "_reatco_version": notes for people
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: {section}", f"is not a section a model may set; use {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section}", "must be a JSON object of settings")
        for key in _NOT_A_MODEL_SETTING.get(section, ()):
            if key in values:
                raise ConfigError(f"{source}: {section}.{key}", "belongs to a run's config, not to the model")
        try:
            check_known_keys({section: values}, ReAtCoConfig)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err.field}", err.message) from None
        values = dict(values)
        if isinstance(values.get("refinement_thresholds"), dict):
            values["refinement_thresholds"] = _int_keys(values["refinement_thresholds"])
        out[section] = values
    return out


def read_model_defaults(location, hub_kwargs: dict | None = None, local_only: bool = False) -> dict:
    """The checked contents of `<location>/reatco_defaults.json`; {} when the model has none.

    `location` is a local folder or a hub id (downloaded with `hub_kwargs`, unless `local_only`;
    a hub that cannot be reached counts as no file, with a log line)."""
    if location is None:
        return {}
    location = os.fspath(location)
    if os.path.isdir(location):
        path = os.path.join(location, DEFAULTS_FILE)
        if not os.path.isfile(path):
            return {}
    elif local_only:
        return {}
    else:
        from .backbones.tav.checkpoint import CheckpointError, resolve_file

        try:
            path = resolve_file(location, DEFAULTS_FILE, None, hub_kwargs or {})
        except (OSError, CheckpointError) as err:
            logger.debug("no %s for %s: %s", DEFAULTS_FILE, location, err)
            return {}
        if path is None:
            return {}
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(path, f"cannot read the model's defaults: {err}") from err
    return check_model_defaults(raw, path)


def call_defaults(defaults: dict) -> dict:
    """Model defaults → `ReAtCoPipeline.__call__` keyword arguments (only those the model sets)."""
    sampling, model = defaults.get("sampling", {}), defaults.get("model", {})
    out = {}
    for name, value in (("num_inference_steps", sampling.get("steps")), ("guidance_scale", sampling.get("guidance_scale")),
                        ("negative_prompt", sampling.get("negative_prompt")), ("start_in_regions", sampling.get("start_in_regions")),
                        ("attention_cell_px", model.get("attention_cell_px"))):
        if value is not None:
            out[name] = value
    for section in ("rad", "irjs", "window"):
        if defaults.get(section):
            out[section] = dict(defaults[section])
    return out


def merge_section(model_value: dict | None, given):
    """A call's rad/irjs/window argument over the model's: a dict is merged key by key (the
    call's keys win), a config dataclass replaces the model's settings whole."""
    if given is None:
        return dict(model_value) if model_value else None
    if isinstance(given, dict) and model_value:
        return {**model_value, **given}
    return given


__all__ = ["DEFAULTS_FILE", "read_model_defaults", "check_model_defaults", "call_defaults", "merge_section"]
