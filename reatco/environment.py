"""What this run runs on: the device a config or caller names, and the package versions a
report records."""

from __future__ import annotations

import platform

import torch

from .errors import ConfigError


def resolve_device(name: str | torch.device | None, field: str = "model.device") -> torch.device:
    """"auto" (or None) → CUDA where available, else the CPU; a CUDA device asked for on a machine
    without CUDA is a ConfigError naming `field`."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(field, f"{name} was asked for but CUDA is not available; use auto or cpu")
    return device


def package_versions() -> dict[str, str]:
    """The versions that decide a result: reatco, Python and the model stack."""
    import accelerate
    import diffusers
    import transformers

    from . import __version__

    return {
        "reatco": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
