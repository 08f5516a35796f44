"""The `irjs:` section: IRJS's settings, their choices written once, and their checks."""

from dataclasses import dataclass
from typing import Literal

from ..schema import at_least, choice

Placement = Literal["before_step", "after_step"]
SourceLatents = Literal["noise", "inversion"]
SourceNoise = Literal["per_window", "per_step"]
DecodeStatistics = Literal["edit", "source"]
DecodeOutside = Literal["edit", "source", "source_frames"]


@dataclass
class IRJSConfig:
    """Invariant Region Joint Sampling: keep everything outside the regions from the source."""

    # false for edits that must change the background.
    enabled: bool = True
    # before_step (official code: blend x_t before the UNet) | after_step (paper: blend x_{t-1}).
    placement: str = "before_step"
    # noise (source latents forward-noised with seeded noise) | inversion (DDIM-inversion trajectory).
    source: str = "noise"
    # With temporal windows and placement before_step, source noise: per_window (official: a fresh
    # draw for each window, so overlapping windows see different noise) | per_step (one draw per
    # step shared by every window). The same for a whole-clip pass.
    noise: str = "per_window"
    # Soft edge of the blend mask, in latent cells (0 = hard edge).
    feather: int = 0
    # edit (plain VAE decode) | source: decode the edit with the normalisation statistics the VAE
    # decoder's GroupNorm layers had for the source frames, so that the edit inside the regions
    # does not shift the colours of the whole frame (reatco/irjs/decoding.py).
    decode_statistics: str = "edit"
    # edit (every pixel is the decoded edit) | source: outside the regions' latent cells (the cells
    # IRJS keeps from the source), the pixels are the source latents' own decode. The decoder's
    # receptive field carries the edit a few pixels across every region edge; IRJS keeps those
    # latents, so their pixels are the source's (reatco/irjs/decoding.py). source_frames: the same
    # outside each pixel frame's own regions: on Wan a latent frame covers 4 pixel frames and IRJS
    # can keep only the union of their regions, so a pixel that another frame of the group has in
    # a region is the edit's under `source`; here it is the source's again. On the UNet (one latent
    # frame a pixel frame) it is `source`.
    decode_outside: str = "edit"


def validate_irjs(irjs: IRJSConfig, p: str = "irjs") -> None:
    """Check an IRJS section (ConfigError naming `p`.field)."""
    choice(irjs.placement, Placement, f"{p}.placement")
    choice(irjs.source, SourceLatents, f"{p}.source")
    choice(irjs.noise, SourceNoise, f"{p}.noise")
    at_least(irjs.feather, 0, f"{p}.feather", " latent cells")
    choice(irjs.decode_statistics, DecodeStatistics, f"{p}.decode_statistics")
    choice(irjs.decode_outside, DecodeOutside, f"{p}.decode_outside")
