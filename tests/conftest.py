"""Test-session settings shared by every test file."""

import os
from pathlib import Path

import torch

# The commands the tests start (python scripts/edit.py ...) import this checkout's reatco, whether
# or not it is the installed one. (tests/ itself is on the path by pyproject's pytest settings.)
ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

# Tiny models do microseconds of work per op: on a shared, loaded CPU the spin-waits of a second
# intra-op thread dominate (a tiny UNet forward measured 60× slower with 2 threads than with 1).
torch.set_num_threads(1)

# Tuned UNets and inversions are cached outside the output folders (default ~/.cache/reatco):
# keep the tests' cache in a temporary folder of their own.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["REATCO_CACHE_DIR"] = tempfile.mkdtemp(prefix="reatco-test-cache-")
atexit.register(shutil.rmtree, os.environ["REATCO_CACHE_DIR"], True)
