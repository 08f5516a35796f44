"""Writing results so that a folder that exists is always complete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(new: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder `new` to `final`, replacing what was there only once `new` is
    complete: a crash leaves either the old result or the new one, never a mix."""
    new, final = Path(new), Path(final)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
