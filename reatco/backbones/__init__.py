"""The networks a ReAtCo edit drives (backbones): what a denoising step needs from a model
(`base.py`), one module or folder per backbone: `tav/` is the Tune-A-Video UNet (Stable Diffusion
v1.x inflated to video), `wan/` is Wan 2.1 / 2.2 (a flow-matching video DiT in diffusers).

`backbone_of(model)` reads which one a config's model is; `edit_runner(cfg)` is the runner that
`scripts/edit.py` and `scripts/eval_loveu.py` use for it.
"""

from __future__ import annotations

import json
import os
import re

_WAN_ID = re.compile(r"(^|/)wan[-_ ]?2", re.IGNORECASE)
_WAN_PIPELINES = ("WanPipeline", "WanReAtCoPipeline")


def backbone_of(model) -> str:
    """"unet" or "wan" for a config's `model` section: `model.backbone` when it names one; with
    "auto", wan when the folder's model_index.json names a Wan pipeline (or, for a hub id with no
    local folder, when the id names Wan 2.x), else unet."""
    choice = getattr(model, "backbone", "auto")
    if choice != "auto":
        return choice
    path = os.fspath(model.pretrained)
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                name = json.load(f).get("_class_name")
        except (OSError, ValueError):
            return "unet"  # the UNet path reports the damaged folder with its own errors
        if isinstance(name, list):  # ["module", "Class"] (a custom pipeline)
            name = name[-1]
        return "wan" if name in _WAN_PIPELINES else "unet"
    return "wan" if _WAN_ID.search(path) else "unet"


def edit_runner(cfg, progress: bool = True, overwrite: bool = True):
    """The EditRunner for the config's backbone."""
    if backbone_of(cfg.model) == "wan":
        from .wan.runner import WanEditRunner

        return WanEditRunner(cfg, progress=progress, overwrite=overwrite)
    from ..runner import EditRunner

    return EditRunner(cfg, progress=progress, overwrite=overwrite)
