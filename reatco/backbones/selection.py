"""Which backbone a config's model is, read from the model alone (no weights, no runner imports:
`reatco.arguments` uses it too)."""

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
