"""reatco: Re-Attentional Controllable Video Diffusion Editing (ReAtCo, AAAI 2025) on diffusers.

`import reatco` stays light: the pipeline (and with it diffusers and the models) is imported on
first use of `reatco.ReAtCoPipeline`.
"""

__version__ = "0.1.0"

from .arguments import pipeline_arguments  # noqa: E402
from .config_files import load_config  # noqa: E402
from .video import read_video, write_video  # noqa: E402

__all__ = ["ReAtCoPipeline", "load_config", "pipeline_arguments", "read_video", "write_video", "__version__"]


def __getattr__(name):
    if name in ("ReAtCoPipeline", "ReAtCoPipelineOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'reatco' has no attribute {name!r}")
