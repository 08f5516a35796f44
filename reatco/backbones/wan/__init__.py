"""ReAtCo on Wan 2.1 / 2.2 (diffusers' WanPipeline components): the backbone (backbone.py) and the pipeline (pipeline.py)."""

from .backbone import WanBackbone, default_rad_blocks, resolve_rad_blocks
from .pipeline import WanReAtCoPipeline, plan_from_folder, plan_wan_edit

__all__ = ["WanBackbone", "WanReAtCoPipeline", "default_rad_blocks", "plan_from_folder", "plan_wan_edit", "resolve_rad_blocks"]
