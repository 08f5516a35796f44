"""The Tune-A-Video UNet's former home, kept so that what was written with it still loads.

The code lives in `reatco.backbones.tav`. `from reatco.models import TuneAVideoUNet` is in the
README note of every tuned UNet folder, and pipelines saved before the move name this package in
their model_index.json (`["reatco.models", "TuneAVideoUNet"]` or `["reatco.models.unet", …]`):
diffusers imports that module and looks the class up in it.
"""

import sys

from diffusers import ModelMixin  # noqa: F401  (diffusers' loader reads the base classes here)

from ..backbones import tav
from ..backbones.tav import *  # noqa: F401,F403
from ..backbones.tav import __all__  # noqa: F401

# `reatco.models.unet` etc., as saved model_index.json files name them
for _name in ("attention", "checkpoint", "frames", "layers", "norm", "unet"):
    sys.modules[f"{__name__}.{_name}"] = getattr(tav, _name)
