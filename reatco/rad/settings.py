"""The `rad:` section: RAD's settings, their choices written once, and their checks."""

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from ..schema import at_least, choice, require

TopKRounding = Literal["truncate", "round"]
BoxGrid = Literal["round", "coverage"]
Refinement = Literal["official", "full", "max_inner"]
TokenNormalization = Literal["softmax", "share"]
WordTokens = Literal["mean", "sum"]


@dataclass
class RADConfig:
    """Re-Attentional Diffusion: steer each word's cross-attention into its region."""

    enabled: bool = True
    # RAD updates the latent on the first max_update_steps denoising steps only.
    max_update_steps: int = 25
    # α_i = step_size · sqrt(linspace(step_size_range[0], step_size_range[1], steps)[i]).
    step_size: float = 20.0
    step_size_range: List[float] = field(default_factory=lambda: [1.0, 0.5])
    # The RAD terms are means over the frames of one pass, so a pass of F frames gives each frame
    # 1/F of the push. The official α was set on passes of 4 frames (its sliding windows): α is
    # multiplied by (frames in the pass) / calibration_frames, so that each frame gets what the
    # official 4-frame windows give it whatever the pass holds (a whole clip, any window size),
    # and 4-frame windows run exactly the official numerics. null: no scaling (the push per frame
    # then falls as 1/F with the frames per pass).
    calibration_frames: Optional[int] = 4
    # Softmax temperature over the text tokens (attention × temperature).
    temperature: float = 100.0
    # How a cell's attention is spread over the text tokens: softmax (official, × temperature)
    # | share (attention / its sum over the kept tokens; for models whose EOT/padding sink holds
    # nearly all attention, where the softmax of the tiny rest is flat).
    token_normalization: str = "softmax"
    # How a word of several tokens combines their maps: sum (the word's share of the text
    # attention, ≤ 1 like a single token's) | mean (at most 1/k for k tokens, so the refinement
    # thresholds 0.5 and 0.8 are out of reach of a phrase or a split word).
    word_tokens: str = "sum"
    # 3-D Gaussian smoothing of the word maps over frames × h × w.
    smoothing: bool = True
    smoothing_kernel: int = 3
    smoothing_sigma: float = 0.5
    # K of the top-K means: this fraction of the inside (or outside) area.
    top_k_ratio: float = 0.2
    # How K is counted: truncate (official: int(top_k_ratio · area), at least 1 where the
    # official gives 0 and a NaN) | round (max(1, round(top_k_ratio · area)), halves up).
    top_k_rounding: str = "truncate"
    # How a box becomes cells of a grid (the RAD attention grid, and the latent grid of IRJS and
    # start_in_regions): round (official: each coordinate to round(b / cell), half to even; x
    # scaled by the width ratio) | coverage (the rows and columns the box covers at least half of).
    # Either keeps the cell of the box centre where an axis would be left empty.
    box_grid: str = "round"
    # False: softmax over every token but SOT and the last (official code); True: prompt tokens only.
    normalize_eot: bool = False
    # {step index: threshold}: at these steps repeat the update until every word's inner
    # attention reaches the threshold (Attend-and-Excite style).
    refinement_thresholds: Dict[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    max_refinement_iters: int = 20
    # How refinement runs: official (the official control flow exactly: steps on the worst word's
    # inner term, the stop test reads the loss measured before the latest step, and the update
    # after refinement takes fresh inner terms with the outer terms of the pre-refinement pass,
    # whose gradient is zero) | full (every step on the whole fresh RAD loss, the stop test and
    # the final update read the latest pass) | max_inner (as full, stepping on the worst word's
    # inner term).
    refinement: str = "official"
    # Trade compute for memory in the RAD forward (which keeps its graph).
    gradient_checkpointing: bool = False
    # Stop the RAD forward after the last recorded layer (its output is not needed).
    early_stop: bool = True
    # Anchoring (not in the paper): after the denoising step at each of these fractions of the
    # steps (step index int(ratio × steps), as diffusers' cutoff_step_ratio), every frame of an
    # object takes the latents of its region in the frame where its word holds the most attention
    # at that step, moved with the region (reatco/rad/anchoring.py). A model
    # may leave an object out of single frames while drawing it in the others; from that step on
    # every frame develops it. A later fraction anchors again, from the frame that holds the object
    # best by then (an early anchor frame the model went on to leave empty is replaced). It steers
    # by attention as RAD does and is off with RAD. []: off (the paper).
    anchor_step_ratios: List[float] = field(default_factory=list)
    # Wan only: the transformer blocks whose cross-attention (attn2) RAD reads, in each expert.
    # null: blocks num_layers // 2 … 2 · num_layers // 3 (Wan 2.1 1.3B's 30 blocks: 15…20; 14B's 40:
    # 20…26), the relative depth that steered best on the trained shapes DiT (its blocks 3 and 4 of
    # 6: placement 0.99 against 0.82–0.93 for earlier pairs; `default_rad_blocks` has the readings).
    # The RAD forward stops after the last of them.
    blocks: Optional[List[int]] = None


def validate_rad(rad: RADConfig, steps: Optional[int], p: str = "rad") -> None:
    """Check a RAD section (ConfigError naming `p`.field). `steps`: the sampling steps the
    refinement thresholds must fall in, or None to leave that check out."""
    at_least(rad.max_update_steps, 0, f"{p}.max_update_steps")
    if rad.blocks is not None:  # against the model's block count when it loads (Wan's resolve_rad_blocks)
        require(len(rad.blocks) > 0 and all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in rad.blocks),
                f"{p}.blocks", f"must be a non-empty list of transformer block indices ≥ 0, or null, got {list(rad.blocks)}")
    at_least(rad.step_size, 0, f"{p}.step_size")
    r = rad.step_size_range
    require(len(r) == 2 and all(x > 0 for x in r), f"{p}.step_size_range",
             f"must be two positive numbers [start, end] (default [1.0, 0.5]), got {r}")
    if rad.calibration_frames is not None:
        at_least(rad.calibration_frames, 1, f"{p}.calibration_frames", " (default 4, the official window; null: no scaling)")
    require(rad.temperature > 0, f"{p}.temperature", f"must be > 0 (default 100), got {rad.temperature}")
    require(rad.smoothing_kernel >= 1 and rad.smoothing_kernel % 2 == 1, f"{p}.smoothing_kernel",
             f"must be an odd number ≥ 1 (default 3), got {rad.smoothing_kernel}")
    require(rad.smoothing_sigma > 0, f"{p}.smoothing_sigma", f"must be > 0 (default 0.5), got {rad.smoothing_sigma}")
    require(0 < rad.top_k_ratio <= 1, f"{p}.top_k_ratio", f"must be in (0, 1] (default 0.2), got {rad.top_k_ratio}")
    choice(rad.top_k_rounding, TopKRounding, f"{p}.top_k_rounding")
    choice(rad.box_grid, BoxGrid, f"{p}.box_grid")
    for step, threshold in rad.refinement_thresholds.items():
        require(isinstance(step, int) and not isinstance(step, bool), f"{p}.refinement_thresholds.{step}",
                 f"keys are denoising step indices (integers), got {step!r}")
        require(steps is None or 0 <= step < steps, f"{p}.refinement_thresholds.{step}",
                 f"step index must be in [0, {steps}) (sampling.steps = {steps}); set rad.refinement_thresholds "
                 "to a table of earlier steps, e.g. {0: 0.05, 5: 0.5}")
        require(step >= 0, f"{p}.refinement_thresholds.{step}", "step indices start at 0")
        require(isinstance(threshold, (int, float)) and 0 <= threshold <= 1, f"{p}.refinement_thresholds.{step}",
                 f"threshold must be in [0, 1], got {threshold}")
    at_least(rad.max_refinement_iters, 0, f"{p}.max_refinement_iters")
    choice(rad.refinement, Refinement, f"{p}.refinement")
    choice(rad.token_normalization, TokenNormalization, f"{p}.token_normalization")
    choice(rad.word_tokens, WordTokens, f"{p}.word_tokens")
    require(isinstance(rad.anchor_step_ratios, (list, tuple)), f"{p}.anchor_step_ratios",
             f"must be a list of fractions of the steps (e.g. [0.2, 0.4]; [] is off), got {rad.anchor_step_ratios!r}")
    for k, ratio in enumerate(rad.anchor_step_ratios):
        require(isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 <= ratio < 1,
                 f"{p}.anchor_step_ratios.{k}",
                 f"must be a fraction of the steps in [0, 1) (e.g. [0.2, 0.4]; [] is off), got {ratio!r}")
