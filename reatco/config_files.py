"""Config files: YAML layers (`base_config:`), `--set` overrides, model folders' defaults, saving.

The schema and the checks are config.py's (and each part's settings.py); this module reads
and writes files.

A config file may name another with `base_config:` (a path relative to the file); the base is
loaded first (recursively) and the file is merged over it. Overrides use OmegaConf's dotlist
form (`sampling.seed=7`, `edits.0.prompt=...`). Unknown keys are rejected with a suggestion,
wrong types and bad values with a `ConfigError` naming the field — all before any model loads.

Relative file paths in a YAML file are taken from that file's folder and made absolute:
`video.path` and object `mask`s always, `model.pretrained` / `model.tuned_unet` only when such a
folder exists (otherwise they are hub ids). Output folders (`output_dir`, `cache_dir`, `tune.output_dir`,
`inversion.cache_dir`) stay relative to the working directory, like any command-line path.

A local model folder may carry its own defaults (`reatco_defaults.json`, model_defaults.py): they
take the place of the library's for every setting that no file and no override sets.
"""

import copy
import os
import re
import typing
from pathlib import Path
from typing import Any, List, Sequence

from omegaconf import OmegaConf

from .config import ModelConfig, ReAtCoConfig, validate
from .errors import ConfigError
from .files import write_text_atomic
from .model_defaults import read_model_defaults
from .schema import (ATOMIC_KEYS, check_known_keys, child_type, config_to_dict, join_path, merge_dicts, typed,
                     unwrap_optional)

_BASE_KEY = "base_config"

# ----------------------------------------------------------------------------- loading


def _is_local(value) -> bool:
    return isinstance(value, str) and value != "" and "${" not in value


def _resolve_paths(raw: dict, folder: Path) -> None:
    """Make a file's relative input paths absolute, taken from the file's own folder."""
    def absolute(p: str) -> str:
        p = os.path.expanduser(p)
        return p if os.path.isabs(p) else os.path.abspath(folder / p)

    video = raw.get("video")
    if isinstance(video, dict) and _is_local(video.get("path")):
        video["path"] = absolute(video["path"])
    model = raw.get("model")
    if isinstance(model, dict):
        for key in ("pretrained", "tuned_unet"):
            value = model.get(key)
            if _is_local(value) and not os.path.isabs(value) and (folder / value).exists():
                model[key] = absolute(value)
    for edit in raw.get("edits") or []:
        for obj in (edit.get("objects") or []) if isinstance(edit, dict) else []:
            for key in ("mask", "boxes_file"):
                if isinstance(obj, dict) and _is_local(obj.get(key)):
                    obj[key] = absolute(obj[key])


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError("config", f"{path} does not exist")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors come in several types
        raise ConfigError("config", f"{path} is not valid YAML: {err}") from err
    raw = OmegaConf.to_container(node, resolve=False)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{path} must hold a mapping of sections (model:, video:, edits:, ...)")
    return raw


def _load_layers(path: Path, chain: tuple = ()) -> List[dict]:
    """A YAML file and its base_config chain, base first, each with its paths resolved."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(_BASE_KEY, f"inheritance cycle: {cycle}")
    raw = _read_yaml(path)
    base = raw.pop(_BASE_KEY, None)
    _resolve_paths(raw, path.parent)
    if base is None:
        return [raw]
    if not isinstance(base, str) or not base:
        raise ConfigError(_BASE_KEY, f"in {path}: must be a path to a YAML file, got {base!r}")
    base_path = path.parent / os.path.expanduser(base)
    if not base_path.is_file():
        raise ConfigError(_BASE_KEY, f"in {path}: {base_path} does not exist (base_config is relative to the file)")
    return _load_layers(base_path, chain + (path,)) + [raw]


def _with_model_defaults(layers: List[dict], overrides: Sequence[str]) -> dict:
    """Merge the layers, apply the overrides, and fill in the model folder's own defaults
    (reatco_defaults.json, model_defaults.py) for every setting that no layer sets, where a layer
    that writes out the library's defaults in full (configs/base.yaml) sets nothing."""
    raw: dict = {}
    for layer in layers:
        raw = merge_dicts(raw, layer)
    raw.pop(_BASE_KEY, None)
    for item in overrides:
        _apply_override(raw, item)
    pretrained = (raw.get("model") or {}).get("pretrained", ModelConfig.pretrained)
    model_defaults = read_model_defaults(pretrained, local_only=True) if _is_local(pretrained) else {}
    if not model_defaults:
        return raw
    library = config_to_dict(ReAtCoConfig())
    explicit = [layer for layer in layers if layer != library]
    for item in overrides:  # an override is one more explicit layer: `rad.step_size=3` or `rad={step_size: 3}`
        key, _, text = item.partition("=")
        parts = _split_key(key.strip())
        value = _parse_value(text, child_type(ReAtCoConfig, parts[0], "")) if len(parts) == 1 else None
        explicit.append({parts[0]: value if isinstance(value, dict) else {}} if len(parts) == 1 else {parts[0]: {parts[1]: None}})
    for section, values in model_defaults.items():
        for key, value in values.items():
            if not any(isinstance(layer.get(section), dict) and key in layer[section] for layer in explicit):
                raw.setdefault(section, {})[key] = copy.deepcopy(value)
    return raw


def _split_key(key: str) -> List[Any]:
    """`edits.0.prompt` or `edits[0].prompt` -> ['edits', 0, 'prompt']."""
    parts = []
    for part in re.sub(r"\[(\d+)\]", r".\1", key).split("."):
        if part == "":
            raise ConfigError(key, "malformed override key; write e.g. sampling.seed=7 or edits.0.prompt=...")
        parts.append(int(part) if part.isdigit() else part)
    return parts


def _parse_value(text: str, tp, key: str = "value"):
    """Text of an override -> value: verbatim for text fields, YAML otherwise."""
    optional = unwrap_optional(tp) is not tp
    tp = unwrap_optional(tp)
    if tp is str:
        if text in ("null", "~") or (optional and text == ""):
            return None
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
    except Exception as err:  # yaml and OmegaConf raise several types
        raise ConfigError(key, f"cannot parse the value {text!r}: {str(err).splitlines()[0]}; "
                               "quote text, write lists as [a, b] and mappings as {k: v}") from None


def _overridden(old, new, key):
    """`section={a: 1}` sets a, keeping the section's other values (as OmegaConf's dotlist does)."""
    if isinstance(old, dict) and isinstance(new, dict) and key not in ATOMIC_KEYS:
        return merge_dicts(old, new)
    return new


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(item, "an override is key=value, e.g. sampling.seed=7 or edits.0.prompt=...")
    if key == _BASE_KEY:
        raise ConfigError(key, "base_config cannot be overridden; put it in the YAML file")
    parts = _split_key(key)
    tp, node, path = ReAtCoConfig, raw, ""
    for i, part in enumerate(parts):
        tp = child_type(tp, part, path)
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise ConfigError(join_path(path, part), f"index out of range: {path} has {len(node)} entries")
            if last:
                node[part] = _overridden(node[part], _parse_value(text, tp, key), part)
            node = node[part]
        else:
            if last:
                node[part] = _overridden(node.get(part), _parse_value(text, tp, key), part)
            elif isinstance(part, int):
                raise ConfigError(join_path(path, part), f"{path or 'config'} is not a list")
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = [] if typing.get_origin(unwrap_optional(tp)) in (list, List) else {}
                node = node[part]
        path = join_path(path, part)


def _refuse_interpolation(node, path: str = "") -> None:
    """OmegaConf would resolve `${...}` while typing the config: `${oc.env:TOKEN}` copies an
    environment variable into the saved config.yaml. User configs hold plain values only."""
    if isinstance(node, str) and "${" in node:
        raise ConfigError(path or "config", f"{node!r}: ${{...}} interpolation is not supported in reatco configs "
                          "(${oc.env:...} would copy environment variables into the saved config.yaml); write the value itself")
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_interpolation(value, join_path(path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_interpolation(value, join_path(path, i))


def _build(layers: List[dict], overrides: Sequence[str], name: str, check_paths: bool) -> ReAtCoConfig:
    if isinstance(overrides, str):
        overrides = [overrides]
    raw = _with_model_defaults(layers, overrides)
    check_known_keys(raw, ReAtCoConfig)
    _refuse_interpolation(raw)
    cfg = typed(ReAtCoConfig, raw)
    if cfg.output_dir is None:
        cfg.output_dir = os.path.join("outputs", name)
    validate(cfg, check_paths=check_paths)
    return cfg


def load_config(path, overrides: Sequence[str] = (), check_paths: bool = True) -> ReAtCoConfig:
    """Load a YAML config (with its base_config chain), apply overrides, validate.

    Settings that no file and no override sets come from the model folder's
    `reatco_defaults.json` when `model.pretrained` is a local folder that has one, else from the
    library's defaults. check_paths=False skips the existence checks of input files."""
    path = Path(path)
    return _build(_load_layers(path), overrides, path.stem, check_paths)


def config_from_dict(d: dict, overrides: Sequence[str] = (), check_paths: bool = True,
                     base_dir=None, name: str = "reatco") -> ReAtCoConfig:
    """Same as load_config for a dict; relative input paths are taken from `base_dir` when given
    (a `base_config` key needs it), output_dir defaults to outputs/<name>."""
    raw = OmegaConf.to_container(OmegaConf.create(d), resolve=False) if not isinstance(d, dict) else copy.deepcopy(d)
    layers = [raw]
    if base_dir is not None:
        folder = Path(base_dir)
        base = raw.pop(_BASE_KEY, None)
        _resolve_paths(raw, folder)
        if base is not None:
            layers = _load_layers(folder / base) + [raw]
    elif raw.get(_BASE_KEY) is not None:
        raise ConfigError(_BASE_KEY, "config_from_dict needs base_dir= to find the base config")
    return _build(layers, overrides, name, check_paths)


# ----------------------------------------------------------------------------- saving


def _relative_inputs(d: dict, folder: Path) -> dict:
    """The input paths of a config dict made relative to `folder` where they can be (the way
    load_config reads them: from the file's own folder); hub ids and other drives stay as they are."""
    def rel(p):
        if not isinstance(p, str) or not os.path.isabs(p) or not os.path.exists(p):
            return p
        try:
            return os.path.relpath(p, folder.resolve())
        except ValueError:  # another drive
            return p

    d["video"]["path"] = rel(d["video"]["path"])
    d["model"]["pretrained"] = rel(d["model"]["pretrained"])
    d["model"]["tuned_unet"] = rel(d["model"]["tuned_unet"])
    for edit in d["edits"]:
        for obj in edit["objects"]:
            obj["mask"] = rel(obj["mask"])
    return d


def save_config(cfg, path, relative_inputs: bool = False) -> None:
    """Write the resolved config as YAML (atomically); load_config reads it back equal.
    relative_inputs: write the input paths (video, masks, local model folders) relative to the
    file's folder, so that a results folder moved with its inputs still reruns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    if relative_inputs and "video" in data:
        data = _relative_inputs(data, path.parent)
    text = "# Resolved reatco config: every value, base configs and overrides applied.\n"
    if relative_inputs:
        text += "# Input paths are relative to this file's folder; output folders to the working directory.\n"
    text += OmegaConf.to_yaml(OmegaConf.create(data))
    write_text_atomic(path, text)
