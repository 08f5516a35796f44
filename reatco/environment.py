"""What this run runs on: the device a config or caller names, and the package versions a
report records."""

from __future__ import annotations

import platform

import torch

from .errors import ConfigError
from .version import __version__


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


    return {
        "reatco": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def _looks_like_path(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, ./ ../ ~, or more than one '/'."""
    import os

    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def check_model_available(name, field: str = "model.pretrained", marker: str = "model_index.json",
                          what: str = "Stable Diffusion layout") -> None:
    """Weights that cannot be had fail here, in seconds and before any work, with one line that
    names `field` and what to do — not after token tables, tuning set-up and the hub client's
    retries with back-off. A local folder must exist; a hub id must be in the local Hugging Face
    cache (its `marker` file) or the hub reachable."""
    import os

    text = os.fspath(name)
    local = os.path.expanduser(text)
    if os.path.isdir(local):
        return
    if os.path.exists(local) or _looks_like_path(text):
        raise ConfigError(field, f"{text} is not a folder; give a folder in {what} or a hub id (org/name)")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(text, marker)
    except Exception:  # an id the hub client refuses (bad characters): the message below says it all
        cached = None
    if isinstance(cached, str):
        return
    from huggingface_hub import constants

    offline = bool(constants.HF_HUB_OFFLINE)
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise ConfigError(field, f"{text} is not in the local Hugging Face cache and {why}: download it once with a "
                                 f"connection (`hf download {text}`) and then run with HF_HUB_OFFLINE=1, "
                                 f"or give a local folder in {what}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick probe, because the hub client retries an unreachable host for minutes."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False
