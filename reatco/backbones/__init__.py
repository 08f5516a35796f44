"""The networks a ReAtCo edit drives (backbones): what a denoising step needs from a model
(`base.py`), one module or folder per backbone: `tav/` is the Tune-A-Video UNet (Stable Diffusion
v1.x inflated to video), `wan/` is Wan 2.1 / 2.2 (a flow-matching video DiT in diffusers).

`backbone_of(model)` reads which one a config's model is; `edit_runner(cfg)` is the runner that
`scripts/edit.py` and `scripts/eval_loveu.py` use for it.
"""

from __future__ import annotations

from .selection import backbone_of


def edit_runner(cfg, progress: bool = True, overwrite: bool = True):
    """The EditRunner for the config's backbone."""
    if backbone_of(cfg.model) == "wan":
        from .wan.runner import WanEditRunner

        return WanEditRunner(cfg, progress=progress, overwrite=overwrite)
    from ..runner import EditRunner

    return EditRunner(cfg, progress=progress, overwrite=overwrite)
