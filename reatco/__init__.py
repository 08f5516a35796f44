"""reatco: Re-Attentional Controllable Video Diffusion Editing on diffusers."""

__version__ = "0.1.0"
