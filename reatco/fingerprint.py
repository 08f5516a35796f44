"""Cache keys from content: a cache entry is reused only when everything that produced it is the same.

- `digest_tensor`: the bytes of a tensor (the video frames as read, not the file's size and mtime,
  which `cp -p`, rsync and tar keep while the content changes).
- `digest_path`: the content of a model folder or file (a hub id is its own identity). Hashing
  gigabytes of weights on every run would cost seconds, so each file's hash is remembered next to
  the cache, keyed by its size, mtime, ctime and inode: ctime cannot be set by any copy tool, so a
  changed file is always re-hashed.
- `cache_key`: one short hash of named parts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

# Bump when what a cached tuned UNet or trajectory means changes (the code that makes them).
KEY_VERSION = 1


def digest_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def digest_tensor(tensor) -> str:
    """sha256 of a tensor's dtype, shape and values (CPU, contiguous)."""
    t = tensor.detach().cpu().contiguous()
    head = json.dumps([str(t.dtype), list(t.shape)]).encode()
    return digest_bytes(head, t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if t.numel() else b"")


def digest_array(array) -> str:
    import numpy as np

    a = np.ascontiguousarray(array)
    return digest_bytes(json.dumps([str(a.dtype), list(a.shape)]).encode(), a.tobytes())


def _byte_dtype():
    import torch

    return torch.uint8


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class _Memo:
    """{absolute path: [size, mtime_ns, ctime_ns, inode, sha256]} in a JSON file (best effort)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {}
        self.changed = False
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # missing, unreadable, not JSON: rebuilt
                data = {}
            if not isinstance(data, dict):  # a list, a number…: not ours; rebuilt, never fatal
                logger.warning("%s does not hold file hashes (a JSON object); rebuilding it", path)
                data, self.changed = {}, True
            self.data = data

    def digest(self, file: Path) -> str:
        st = file.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        key = str(file.resolve())
        known = self.data.get(key)
        if isinstance(known, list) and len(known) == 5 and known[:4] == stamp and _is_sha256(known[4]):
            return known[4]
        value = _file_digest(file)
        self.data[key] = stamp + [value]
        self.changed = True
        return value

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        from .files import write_text_atomic

        try:
            write_text_atomic(self.path, json.dumps(self.data))
        except OSError as err:  # a read-only cache only costs re-hashing
            logger.warning("could not save file hashes to %s: %s", self.path, err)


def digest_path(path: str | os.PathLike | None, memo: str | os.PathLike | None = None,
                only: Iterable[str] | None = None) -> str | None:
    """Content identity of a file or folder (every file under it, by relative name), or of a hub
    id (a path that does not exist: the id names it). `only`: top-level names of a folder to
    include (e.g. the model's unet/ and vae/ but not its safety checker)."""
    if path is None:
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        return "hub:" + str(path)
    memo_ = _Memo(Path(memo) if memo is not None else None)
    if p.is_file():
        files = [(p.name, p)]
    else:
        keep = set(only) if only is not None else None
        files = sorted(
            (str(f.relative_to(p)), f) for f in p.rglob("*")
            if f.is_file() and (keep is None or f.relative_to(p).parts[0] in keep) and not f.name.startswith(".")
        )
    listing = [[name, memo_.digest(f)] for name, f in files]
    memo_.save()
    return digest_bytes(json.dumps(listing).encode())


def cache_key(**parts) -> str:
    """A stable short hash of everything a cached result depends on."""
    blob = json.dumps({"key_version": KEY_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def default_cache_root() -> Path:
    """$REATCO_CACHE_DIR, else $XDG_CACHE_HOME/reatco, else ~/.cache/reatco."""
    env = os.environ.get("REATCO_CACHE_DIR")
    if env:
        return Path(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "reatco" if xdg else Path.home() / ".cache" / "reatco"


def cache_root(cfg) -> Path:
    """The cache folder of a run's config (tuned UNets, inversions, the file-hash memo):
    `cache_dir` when set, else default_cache_root()."""
    return Path(cfg.cache_dir) if getattr(cfg, "cache_dir", None) else default_cache_root()


# The parts of a Stable-Diffusion-layout folder that tuning and editing read.
MODEL_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
