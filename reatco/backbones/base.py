"""The backbone seam: what one ReAtCo denoising step needs from a video diffusion model.

RAD, IRJS, the regions, the words and the outputs talk to the network only through a `Backbone`;
none of them imports a network's code. A backbone is a thin object over the pipeline's components
(it owns no weights of its own): `reatco/backbones/tav/backbone.py` wraps the Tune-A-Video UNet
(Stable Diffusion 1.x inflated to video, DDIM), `reatco/backbones/wan/backbone.py` Wan 2.1 / 2.2
(a flow-matching DiT); a new model is a new module implementing this class, not edits across the
package.

Shapes. Pixel video: (F, 3, H, W) in [-1, 1]. Latents: (B, C, f, h, w) with f latent frames,
h = H / spatial_factor, w = W / spatial_factor. A latent frame covers one or more pixel frames
(`frame_groups`); a region on a latent frame is the union of its pixel frames' regions. Text: a
prompt's `PromptTokens` (reatco.tokens) and its embeddings (B, L, d). Attention maps RAD reads:
(B·f, gh, gw, columns), gh × gw the attention grid of the recorded layers.

Errors: a setting the backbone cannot honour (a frame count its VAE cannot pack, a cell size no
layer lives on) is a `ConfigError` naming the setting's field, raised before any model work.
"""

from __future__ import annotations

import abc
import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:  # typing only: the seam itself imports no network code
    import torch

    from ..rad.attention_maps import AttentionStore
    from ..tokens import PromptTokens


class Backbone(abc.ABC):
    """One video diffusion model as RAD, IRJS and the pipeline see it.

    Attributes every backbone sets:
      name: short id written in reports and resolved configs ("tav", "wan").
      spatial_factor: pixels per latent cell along each side (SD's VAE: 8).
      latent_channels: C of the latents.
      device, dtype: where and in which dtype the denoiser runs.
      first_text_column: the column of the prompt's first token on the attention maps' token
        axis. CLIP (the UNet) puts a start token (SOT) at 0, which RAD's normalisation leaves out:
        1. A text encoder without a start token (umT5, Wan): 0.
    """

    name: str
    spatial_factor: int
    latent_channels: int
    first_text_column: int = 1

    # ------------------------------------------------------------------ geometry

    @abc.abstractmethod
    def check_frames(self, n_frames: int, field: str = "video.n_frames") -> None:
        """Refuse a pixel frame count the model cannot take (ConfigError naming `field`), e.g.
        Wan's VAE packs 4k + 1 frames. The Tune-A-Video UNet takes any count ≥ 1."""

    @abc.abstractmethod
    def frame_groups(self, n_frames: int) -> list[list[int]]:
        """For each latent frame, the pixel frames it covers, in order. Identity for the UNet
        ([[0], [1], …]); Wan: [[0], [1, 2, 3, 4], [5, …, 8], …] (4 pixel frames per latent
        frame after the first). Regions, masks and RAD targets on latent frames are the unions
        over these groups."""

    def latent_frames(self, n_frames: int) -> int:
        """Number of latent frames for `n_frames` pixel frames."""
        return len(self.frame_groups(n_frames))

    # ------------------------------------------------------------------ the VAE

    @abc.abstractmethod
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] → scaled latents (1, C, f, h, w), sampled with `generator`
        (deterministic for one generator state)."""

    @abc.abstractmethod
    def decode_latents(self, latents: torch.Tensor, reference: torch.Tensor | None = None, *,
                       reference_statistics: bool = True, keep_reference_outside: torch.Tensor | None = None) -> torch.Tensor:
        """(1, C, f, h, w) → frames (F, 3, H, W) in [0, 1].

        reference / reference_statistics / keep_reference_outside are IRJS's decode options
        (`irjs.decode_statistics`, `irjs.decode_outside`: decode with the source's decoder
        statistics, keep the source's own pixels outside the (1, 1, f, h, w) mask). A backbone
        whose decoder cannot honour one raises ValueError saying which."""

    # ------------------------------------------------------------------ text

    @abc.abstractmethod
    def tokenize(self, prompt: str | PromptTokens) -> PromptTokens:
        """A prompt's tokens, once per call (the word → token lookup and the encoder read them)."""

    @abc.abstractmethod
    def word_token_indices(self, prompt: str | PromptTokens, word: str, occurrence: int | None = None,
                           field: str = "word") -> list[int]:
        """Positions of `word` (its `occurrence`-th appearance, 1-based; None: it must occur once)
        in the prompt's token sequence, as the attention maps' token axis counts them.
        ConfigError naming `field` when the word is not there or is ambiguous."""

    @abc.abstractmethod
    def encode_prompt(self, prompt: str | PromptTokens) -> torch.Tensor:
        """(1, L, d) text embeddings the denoiser is conditioned on."""

    @abc.abstractmethod
    def text_token_count(self, tokens: PromptTokens, prompt_only: bool) -> int:
        """How many token columns, from `first_text_column`, RAD's normalisation spans: the
        prompt's own tokens (`prompt_only`, rad.normalize_eot: no end token) or every column the
        model attends to beyond them (CLIP: up to the padding's end; a model whose padding is
        zero embeddings, Wan: the real tokens with the end token, never the padding)."""

    # ------------------------------------------------------------------ attention RAD reads

    @abc.abstractmethod
    def attention_layers(self, cell_px: int, field: str = "model.attention_cell_px", blocks: Sequence[int] | None = None,
                         blocks_field: str = "rad.blocks") -> list[str]:
        """Names of the cross-attention layers whose grid cell is `cell_px` pixels: those RAD
        records. ConfigError naming `field` when no layer lives on that grid.

        `blocks` (rad.blocks) picks layers where the grid does not: a DiT's blocks all attend on
        one token grid, so which of them RAD reads is a choice (None: the backbone's default). A
        backbone whose grid picks its layers (the UNet) refuses a choice, naming `blocks_field`;
        a DiT refuses a block it does not have, naming it too."""

    @abc.abstractmethod
    def attention_cell_sizes(self) -> list[int]:
        """The cell sizes in pixels, smallest first, of the grids the model's cross-attention
        layers live on: the `cell_px` values `attention_layers` takes (the UNet: one per level;
        a DiT: its one token grid). The region finder picks its level among them."""

    @abc.abstractmethod
    def attention_grid(self, height: int, width: int, cell_px: int) -> tuple[int, int]:
        """(gh, gw) of the attention grid for frames of height × width pixels."""

    @abc.abstractmethod
    def recording(self, layers: Sequence[str], store: AttentionStore,
                  n_text_tokens: int | None = None) -> contextlib.AbstractContextManager[AttentionStore]:
        """Context: install recorders on `layers` that add their maps to `store` (only while the
        store is in a recording mode; plain fast attention otherwise), restoring the model's own
        processors on exit, also on error. The store keeps only `store.columns` of the token axis
        when set. The recorder of the last layer may stop the forward early
        (`store.stop_early`).

        `n_text_tokens`: RAD's span (`text_token_count` columns from `first_text_column`). A
        backbone whose prompt is zero-padded to hundreds of columns (Wan: 512) records its maps
        renormalised over that span and only its columns (the padding's share never reaches RAD,
        and the softmax graph RAD keeps is that narrow); the UNet records every column as the
        model's own probabilities and ignores it."""

    @abc.abstractmethod
    def recording_features(self) -> contextlib.AbstractContextManager[list]:
        """Context: after each model call inside it, the list it yields ends with that call's
        finest spatial features, (B·f, C', h', w') float32 (the UNet's last up block; a DiT's last
        block's tokens on their grid). They tell where an object ends, which the attention of a
        word need not (the region finder grows its seeds over them). Hooks removed on exit."""

    # ------------------------------------------------------------------ one step

    @abc.abstractmethod
    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """Prepare the scheduler for a run of `num_inference_steps`; the timesteps, first to last."""

    @property
    @abc.abstractmethod
    def timesteps(self) -> torch.Tensor:
        """The timesteps of the run `set_timesteps` prepared, first to last."""

    @abc.abstractmethod
    def scale_model_input(self, latents: torch.Tensor, t) -> torch.Tensor:
        """The scheduler's input scaling at timestep t (identity for DDIM and flow matching)."""

    @abc.abstractmethod
    def predict(self, latents: torch.Tensor, t, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """One model call: the denoiser's output (ε for DDIM, the velocity for flow matching) for
        latents (B, C, f, h, w) at timestep t, conditioned on prompt_embeds (B, L, d)."""

    @abc.abstractmethod
    def step(self, model_output: torch.Tensor, t, latents: torch.Tensor) -> torch.Tensor:
        """One scheduler step from t to the next timestep: the previous sample."""

    @abc.abstractmethod
    def renoise_source(self, source: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """The source latents x₀ at the noise level of timestep t, with `noise` (IRJS outside the
        regions): DDIM √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε; flow matching (1 − σ_t)·x₀ + σ_t·ε."""

    @abc.abstractmethod
    def invert(self, source_latents: torch.Tensor, prompt: str, num_inference_steps: int,
               guidance_scale: float = 1.0, progress: bool = True) -> torch.Tensor:
        """The inversion trajectory (steps + 1, 1, C, f, h, w) of `source_latents` under the
        source `prompt`: index 0 is x₀, index k the latent at the k-th smallest sampling timestep
        (sampling step i pairs with index steps − i)."""

    # ------------------------------------------------------------------ RAD's backward pass

    @contextlib.contextmanager
    def differentiable(self, gradient_checkpointing: bool = False) -> Iterator[None]:
        """Context for RAD's pass, which differentiates with respect to the latents only: the
        weights are frozen (no gradient kept for them) and, on request, activations are
        recomputed block by block. The default freezes every parameter of `self.denoiser`."""
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    @property
    @abc.abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The network `predict` calls (the UNet, the transformer)."""
