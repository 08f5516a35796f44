"""How many CPU threads torch uses.

torch starts one thread per core, and its OpenMP threads spin while they wait. On a machine whose
cores other processes keep busy, that is the worst case: the spinning threads fight the other
processes and each other (the shapes demo on a busy 2-core machine: 15 min with torch's 2 threads,
2 min with one). So, unless told: as many threads as cores are idle (the 1-minute load average
taken off the cores this process may use), at least one; and waiting threads sleep
(OMP_WAIT_POLICY=PASSIVE, which the scripts set before torch loads OpenMP).
"""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cores: int | None = None, load: float | None = None, torch_default: int | None = None) -> int:
    """The cores other processes leave idle (cores − 1-minute load average, rounded down),
    between 1 and torch's default."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    torch_default = torch.get_num_threads() if torch_default is None else torch_default
    return max(1, min(torch_default, int(cores - load)))


def set_threads(threads: int | None = None) -> int:
    """torch.set_num_threads(threads or default_threads()); returns the count. 0 or None: choose."""
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be ≥ 0 (0: choose from the idle cores), got {threads}")
    n = threads or default_threads()
    torch.set_num_threads(n)
    return n
