"""Writing results so that a file or folder that exists is always complete, and concurrent runs
on one folder never share a temporary name.

- `atomic_file(path)`: write a temp file beside `path`, rename it into place (mode from the umask);
  `write_text_atomic` and `write_json_atomic` write a text or a JSON file through it.
- `new_partial_dir(final)`: a private temp folder beside `final` for one run to fill.
- `replace_dir(new, final)`: move a finished folder into place, under a lock.
- `file_lock(path)`: an exclusive lock (waits for the holder) so that two runs do not both
  compute what one of them could reuse.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    # The only portable way to read the umask is to set it; the lock keeps threads of this
    # process from seeing the temporary value.
    with _UMASK_LOCK:
        mask = os.umask(0o22)
        os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give them the mode a plain open()/mkdir() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temp path beside `path`; on success it replaces `path` (umask mode), on any error
    (KeyboardInterrupt too) it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`text` into `path` through `atomic_file`: never a half-written file."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return path


def write_json_atomic(path: str | os.PathLike, data, **dump_options) -> Path:
    """`data` as indented JSON (and a final newline) into `path` through `atomic_file`;
    `dump_options` go to json.dumps (sort_keys, allow_nan=False, ...)."""
    return write_text_atomic(path, json.dumps(data, indent=2, **dump_options) + "\n")


def new_partial_dir(final: str | os.PathLike) -> Path:
    """A fresh folder `.<name>.partial-XXXX` beside `final`, private to this run."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    honour_umask(folder, directory=True)
    return folder


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed); wait, saying so, if another process
    holds it. Where fcntl is missing (Windows) this does not lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX everywhere we run
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another run %s (lock %s)", what or "using the same files", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.parent / f".{final.name}.lock"


def replace_dir(new: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder `new` to `final`, replacing what was there only once `new` is
    complete: a crash leaves either the old result or the new one, never a mix. Concurrent calls
    for one `final` take turns (each leaves a complete folder; the last one stays)."""
    new, final = Path(new), Path(final)
    honour_umask(new, directory=True)
    with file_lock(lock_path(final), f"writing {final}"):
        if final.exists() and _exchange(new, final):
            old = new  # it now holds the previous result: readers never saw `final` missing
        else:
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            if final.exists():
                os.replace(final, old)
            os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove a temp file or folder of this run, whatever state it is in."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
