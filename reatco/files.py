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


def _process_start(pid: int) -> str | None:
    """A process's start time (Linux: /proc/<pid>/stat field 22), which tells a live owner from a
    later process that reuses its pid; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_record() -> str:
    return json.dumps({"pid": os.getpid(), "start": _process_start(os.getpid()), "host": os.uname().nodename})


def _owner_is_dead(marker: Path) -> bool:
    """True only when the marker proves its run is gone: same host, and its pid is not running
    (or runs a later process). Anything unclear (another host, an unreadable marker) counts as
    alive: a stale folder left is harmless, one removed under a live run is not."""
    try:
        owner = json.loads(marker.read_text())
        pid, start, host = int(owner["pid"]), owner.get("start"), owner.get("host")
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != os.uname().nodename or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # running, as another user
        return False
    return start is not None and _process_start(pid) not in (None, start)


def clean_stale_partials(final: str | os.PathLike) -> list[Path]:
    """Remove the `.<name>.partial-XXXX/` folders beside `final` whose runs died (killed with
    SIGKILL, a crash of the machine): each run records its owner beside its folder, and only a
    folder whose owner is provably gone is removed. Returns what was removed."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for marker in final.parent.glob(f".{glob_escape(final.name)}.partial-*.owner"):
        folder = marker.with_suffix("")
        if _owner_is_dead(marker):
            remove_quietly(folder)
            remove_quietly(marker)
            removed.append(folder)
            logger.info("removed %s, left by a run that was killed", folder)
    return removed


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def new_partial_dir(final: str | os.PathLike) -> Path:
    """A fresh folder `.<name>.partial-XXXX` beside `final`, private to this run (its owner
    recorded in `.<name>.partial-XXXX.owner`, so that a later run removes it should this one be
    killed); the stale folders of killed runs are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(final)
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    honour_umask(folder, directory=True)
    with contextlib.suppress(OSError):
        folder.with_name(folder.name + ".owner").write_text(_owner_record())
    return folder


class ResultExistsError(FileExistsError):
    """replace_dir(..., replace_finished=False) found a finished result in place: the new one
    was moved to `kept` instead."""

    def __init__(self, final: Path, kept: Path):
        super().__init__(f"{final} holds a finished result; the new one was kept in {kept}")
        self.final, self.kept = final, kept


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


def replace_dir(new: str | os.PathLike, final: str | os.PathLike, replace_finished: bool = True,
                finished_marker: str = "report.json") -> Path:
    """Move the finished folder `new` to `final`, replacing what was there only once `new` is
    complete: a crash leaves either the old result or the new one, never a mix. Concurrent calls
    for one `final` take turns (each leaves a complete folder; the last one stays).

    replace_finished=False: where `final` holds a finished result (its `finished_marker` file),
    checked under the lock at the moment of replacing, `new` is moved beside it as
    `<name>.kept-XXXX` instead and ResultExistsError raised: another run that finished meanwhile
    is never silently replaced, and this run's work is not lost."""
    new, final = Path(new), Path(final)
    honour_umask(new, directory=True)
    owner = new.with_name(new.name + ".owner")
    with file_lock(lock_path(final), f"writing {final}"):
        if not replace_finished and (final / finished_marker).is_file():
            kept = Path(tempfile.mkdtemp(prefix=f"{final.name}.kept-", dir=final.parent))
            os.replace(new, kept)
            honour_umask(kept, directory=True)
            remove_quietly(owner)
            raise ResultExistsError(final, kept)
        if final.exists() and _exchange(new, final):
            old = new  # it now holds the previous result: readers never saw `final` missing
        else:
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            if final.exists():
                os.replace(final, old)
            os.replace(new, final)
        remove_quietly(owner)
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
    """Remove a temp file or folder of this run, whatever state it is in (a partial folder's
    owner record with it)."""
    path = Path(path)
    if ".partial-" in path.name and not path.name.endswith(".owner"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + ".owner").unlink()
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
