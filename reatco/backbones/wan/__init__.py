"""ReAtCo on Wan 2.1 / 2.2 (diffusers' WanPipeline components): see pipeline.py."""

from .pipeline import WanReAtCoPipeline, default_rad_blocks, plan_from_folder, plan_wan_edit, resolve_rad_blocks

__all__ = ["WanReAtCoPipeline", "default_rad_blocks", "plan_from_folder", "plan_wan_edit", "resolve_rad_blocks"]
