"""Load each evaluation model once per process (the same CLIP is used by two metrics)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable

_MODELS: dict[Hashable, Any] = {}
_LOCK = threading.Lock()


def cached(key: Hashable, load: Callable[[], Any]) -> Any:
    """Return the object stored under `key`, calling `load()` the first time only."""
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load()
        return _MODELS[key]


def clear_cache() -> None:
    """Forget every loaded model (tests; freeing memory between evaluation passes)."""
    with _LOCK:
        _MODELS.clear()
