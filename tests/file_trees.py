"""What a folder holds, for tests that check nothing already written is lost or changed."""

import hashlib
from pathlib import Path


def tree_hashes(root: Path, skip=()) -> dict:
    """Every file under root (but the skipped folders) with its content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip) or not p.is_file():
            continue
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
