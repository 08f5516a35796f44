"""Typed settings from plain data: dataclass schemas walked, values typed by OmegaConf, and the
small checks every settings layer uses. Knows no section of reatco's config: `config.py`, the
parts' `settings.py` files and `config_files.py` build on it.

Errors are `ConfigError`s naming the field's path (`rad.top_k_ratio`, `edits[0].objects[1].box`).
"""

import copy
import dataclasses
import difflib
import math
import re
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Dict, List, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

# Mappings that are values, not sub-configs: a later file or override replaces them whole.
ATOMIC_KEYS = {"refinement_thresholds", "boxes"}
INT64_MAX = 2**63 - 1

# ----------------------------------------------------------------------------- schema walking


def unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def field_types(cls) -> Dict[str, Any]:
    """Field name -> type, with an edit's partial sections typed by the section they override."""
    hints = typing.get_type_hints(cls)
    return {f.name: f.metadata.get("partial", hints[f.name]) for f in fields(cls)}


def join_path(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def unknown_key(path: str, key, cls, extra: Sequence[str] = ()) -> ConfigError:
    names = list(field_types(cls)) + list(extra)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f"did you mean {join_path(path, close[0])!r}? " if close else ""
    return ConfigError(join_path(path, key), f"unknown key; {hint}valid keys here: {', '.join(names)}")


def child_type(tp, key, path: str):
    """Type of `key` inside a node of type `tp` (Any where the schema does not say)."""
    tp = unwrap_optional(tp)
    if is_dataclass(tp):
        types = field_types(tp)
        if key not in types:
            raise unknown_key(path, key, tp)
        return types[key]
    origin = typing.get_origin(tp)
    if origin in (list, List):
        if not isinstance(key, int):
            raise ConfigError(path, f"is a list: use an index (e.g. {path}.0), not {key!r}")
        return typing.get_args(tp)[0]
    if origin in (dict, Dict):
        return typing.get_args(tp)[1]
    return Any


def check_known_keys(node, tp, path: str = "") -> None:
    """Reject keys the schema does not have, with the field path and a suggestion."""
    tp = unwrap_optional(tp)
    if is_dataclass(tp) and isinstance(node, dict):
        for key, value in node.items():
            check_known_keys(value, child_type(tp, key, path), join_path(path, key))
    elif typing.get_origin(tp) in (list, List) and isinstance(node, list):
        for i, item in enumerate(node):
            check_known_keys(item, typing.get_args(tp)[0], join_path(path, i))


def merge_dicts(base: dict, over: dict) -> dict:
    """`over` merged onto `base`: mappings recursively, lists and atomic mappings replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ATOMIC_KEYS:
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------- typing


def omegaconf_error(err: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    full_key = getattr(err, "full_key", None) or ""
    message = (getattr(err, "msg", None) or str(err)).split("\n")[0]
    message = f"wrong type or value: {message}"
    return ConfigError(join_path(prefix, full_key) if prefix and full_key else (full_key or prefix or "config"), message)


def _int_keys(node, tp) -> None:
    """Digit-string keys of integer-keyed mappings (refinement_thresholds: {"0": 0.9}, as JSON
    and quoted YAML keys give them) → ints, in place, wherever the schema says Dict[int, …]."""
    tp = unwrap_optional(tp)
    if is_dataclass(tp) and isinstance(node, dict):
        types = field_types(tp)
        for key, value in node.items():
            if key in types:
                _int_keys(value, types[key])
    elif typing.get_origin(tp) in (list, List) and isinstance(node, list):
        for item in node:
            _int_keys(item, typing.get_args(tp)[0])
    elif typing.get_origin(tp) in (dict, Dict) and isinstance(node, dict) and typing.get_args(tp)[:1] == (int,):
        for key in list(node):
            if isinstance(key, str) and re.fullmatch(r"\s*[+-]?\d+\s*", key) and int(key) not in node:
                node[int(key)] = node.pop(key)


def typed(cls, raw: dict, prefix: str = ""):
    """Plain dict -> dataclass instance of `cls`, types checked and converted by OmegaConf."""
    _int_keys(raw, cls)
    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), raw)
        _replace_atomic(node, raw, cls)
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        _locate_type_error(cls, raw, prefix)  # raises with the full path when inside a list
        raise omegaconf_error(err, prefix) from err


def _locate_type_error(cls, raw: dict, prefix: str) -> None:
    """OmegaConf reports keys inside list items without their path: retype item by item."""
    for key, value in raw.items():
        tp = unwrap_optional(field_types(cls).get(key, Any))
        if typing.get_origin(tp) in (list, List) and isinstance(value, list):
            item_cls = typing.get_args(tp)[0]
            if is_dataclass(item_cls):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        typed(item_cls, item, join_path(join_path(prefix, key), i))
        elif is_dataclass(tp) and isinstance(value, dict):
            _locate_type_error(tp, value, join_path(prefix, key))


def _replace_atomic(node, raw: dict, cls) -> None:
    """OmegaConf merges mappings key by key; atomic ones (thresholds) must replace the default."""
    for key, value in raw.items():
        tp = unwrap_optional(field_types(cls).get(key, Any))
        if key in ATOMIC_KEYS and isinstance(value, dict):
            OmegaConf.update(node, key, value, merge=False)
        elif is_dataclass(tp) and isinstance(value, dict):
            _replace_atomic(node[key], value, tp)


def config_to_dict(cfg) -> dict:
    """A config (or one of its sections) as plain dicts and lists."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    if not is_dataclass(cfg):
        raise TypeError(f"config_to_dict expects a config dataclass, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------- checks


def choices(options) -> tuple:
    """The values a setting may take: a `Literal[...]` type's arguments (or a tuple as it is)."""
    return typing.get_args(options) or tuple(options)


def require(ok: bool, field_: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_, message)


def choice(value, options, field_: str) -> None:
    """`value` must be one of `options` (a `Literal[...]` type or a tuple)."""
    options = choices(options)
    require(value in options, field_, f"{value!r} is not one of {', '.join(options)}")


def at_least(value, low, field_: str, what: str = "") -> None:
    require(value is not None and value >= low, field_, f"must be ≥ {low}{what}, got {value}")


def check_finite_values(node, path: str = "") -> None:
    """Every number of the config (sections, edits, boxes, thresholds) must be finite: inf passes
    `≥` checks and NaN fails none, and either turns the edit into black frames."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(path or "config", f"must be a finite number, got {node}")
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite_values(value, join_path(path, key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite_values(value, join_path(path, i))


def check_seed(value, field_: str) -> None:
    require(value is not None and 0 <= value <= INT64_MAX, field_, f"must be in [0, 2**63 − 1], got {value}")
