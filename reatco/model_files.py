"""What a local model folder's config files say, read without loading any weights: the checks
that must run before a model loads (the scheduler's training steps, the cross-attention cells).
Hub ids and folders without those files give None / the Stable Diffusion value: the load itself
reports them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

from .schema import require


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def train_timesteps(pretrained) -> int:
    """The scheduler's training steps of a local model folder (its scheduler_config.json), else
    Stable Diffusion's 1000: sampling and inversion steps cannot exceed them."""
    path = Path(os.path.expanduser(str(pretrained))) / "scheduler" / "scheduler_config.json"
    try:
        value = _read_json(path).get("num_train_timesteps", 1000)
    except (OSError, ValueError, AttributeError):
        return 1000
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1000


def model_attention_cells(pretrained) -> Optional[List[int]]:
    """The cell sizes (px) of a local model folder's cross-attention layers, from its unet/ and
    vae/ configs without loading weights (the layout backbones.tav.layers.cross_attention_scales
    reads from the module); None for a hub id or a folder without those files."""
    folder = Path(os.path.expanduser(str(pretrained)))
    try:
        unet = _read_json(folder / "unet" / "config.json")
        vae = _read_json(folder / "vae" / "config.json")
        vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
        down = list(unet["down_block_types"])
        mid = unet.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    cells = {vae_factor * 2 ** i for i, kind in enumerate(down) if "CrossAttn" in str(kind)}
    if mid and "CrossAttn" in str(mid):
        cells.add(vae_factor * 2 ** (len(down) - 1))
    return sorted(cells) or None


def check_model_cell(value, pretrained, field_: str) -> None:
    """An attention cell the model has (checked from its configs when the folder is local)."""
    cells = model_attention_cells(pretrained)
    require(cells is None or value in cells, field_,
            f"{value} px: the model ({pretrained}) has cross-attention cells of {cells} px only; use one of them")
