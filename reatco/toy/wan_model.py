"""The parts of the shapes-world Wan model (a tiny Wan 2.1 text-to-video model in the diffusers
layout): its configs and builders, the word-level tokenizer, the clips it is trained on, the
cross-attention (attn2) recorder the attention loss and the evaluation read, and the export to a
folder that `diffusers.WanPipeline.from_pretrained` loads exactly as a real Wan checkpoint.

Geometry: clips of 4k + 1 frames (9 and 17) at 64 × 64 → the VAE (4× in space, Wan's 4× in
time) → latents 16 × (k + 1) × 16 × 16 → the transformer with Wan's own patch (1, 2, 2): one token
per 2 × 2 latent cells, 8 × 8 px of one latent frame (the world's objects span 2–3.5 tokens).
Wan's 8× VAE with its 16 channels stalled at 21.9 dB here (48× fewer numbers than pixels; this
one has 12×, as the UNet model's VAE), and with the 8× VAE only a (1, 1, 1) patch gives 8 px tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from . import world

SIZE = world.SIZE
SPATIAL, TEMPORAL = 4, 4  # the VAE's compression: 4× in space (Wan's is 8×), Wan's 4× in time
PATCH = 2  # the transformer's spatial patch, Wan's (1, 2, 2)
TOKEN_PX = SPATIAL * PATCH  # 8 px a token
LATENT = SIZE // SPATIAL  # latent cells a side
GRID = SIZE // TOKEN_PX  # tokens a side
TEXT_TOKENS = 16  # the longest caption (three objects: 15 words) + </s>
PIPELINE_TEXT_LENGTH = 512  # WanPipeline zero-pads the prompt embeddings to this (its default)

VAE_CONFIG = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4], num_res_blocks=1,
                  temperal_downsample=[True, True], scale_factor_spatial=SPATIAL, scale_factor_temporal=TEMPORAL)
TEXT_CONFIG = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=16,
                   relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="gated-gelu")
TRANSFORMER_CONFIG = dict(patch_size=[1, PATCH, PATCH], num_attention_heads=4, attention_head_dim=32, in_channels=16,
                          out_channels=16, text_dim=64, freq_dim=256, ffn_dim=512, num_layers=6,
                          cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
# The blocks whose attn2 the attention loss trains (and RAD should read): the middle of the stack.
ATTENTION_BLOCKS = [2, 3]
# Wan 2.1's shipped scheduler (UniPC on flow sigmas); shift 1: at 8 × 8 tokens a frame the
# resolution-dependent shift of 480p/720p (3/5) would spend most steps at high noise.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                        flow_shift=1.0, solver_order=2, predict_x0=True, lower_order_final=True)


# =============================================================================== tokenizer

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # T5's ids 0, 1, 2


def build_tokenizer():
    """A word-level tokenizer over the world's vocabulary, with T5's conventions (pad 0, </s> 1
    appended, unk 2), wrapped as a transformers PreTrainedTokenizerFast: every caption word is
    exactly one token, so a word's attention column is one index."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in world.vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation (",") apart
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                       special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=PIPELINE_TEXT_LENGTH, padding_side="right")


def word_positions(tokenizer, caption: str) -> dict[str, int]:
    """Each word of the caption → its token index (the first occurrence)."""
    ids = tokenizer(caption).input_ids
    out = {}
    for i, t in enumerate(tokenizer.convert_ids_to_tokens(ids)):
        out.setdefault(t, i)
    return out


# =============================================================================== models

def build_text_encoder(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                     decoder_start_token_id=tokenizer.pad_token_id, **TEXT_CONFIG)
    return UMT5EncoderModel(cfg)


def build_vae(config: dict | None = None):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**(config or VAE_CONFIG))


def build_transformer(config: dict | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**(config or TRANSFORMER_CONFIG))


def build_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)


def encode_text(text_encoder, ids: torch.Tensor, mask: torch.Tensor, length: int = PIPELINE_TEXT_LENGTH) -> torch.Tensor:
    """What WanPipeline hands the transformer: the encoder's states of the real tokens, zeros
    after them, zero-padded to `length` (the pipeline's max_sequence_length)."""
    states = text_encoder(ids, mask).last_hidden_state * mask[..., None].to(text_encoder.dtype)
    return torch.nn.functional.pad(states, (0, 0, 0, length - states.shape[1]))


# =============================================================================== clips

def n_latent_frames(n_frames: int) -> int:
    if (n_frames - 1) % TEMPORAL:
        raise ValueError(f"n_frames must be 4k + 1 (Wan's VAE), got {n_frames}")
    return (n_frames - 1) // TEMPORAL + 1


def latent_frame_groups(n_frames: int) -> list[list[int]]:
    """The pixel frames each latent frame covers: 0 → [0]; i ≥ 1 → 4i − 3 … 4i."""
    return [[0]] + [list(range(TEMPORAL * i - TEMPORAL + 1, TEMPORAL * i + 1)) for i in range(1, n_latent_frames(n_frames))]


THREE_RADIUS = (7.0, 10.0)  # three objects apart along whole paths need smaller shapes (the `three` family's)


def make_clip(seed: int, index: int, n_frames: int, n_objects: int | None = None) -> world.Sample:
    """One clip of the world with the SD shapes model's object count mix (1–3: 35/55/10 %),
    drawn from (seed, index) like its images (or `n_objects`); the motion, textures and captions
    are make_video's. Three objects get the `three` editing family's radii (at the world's 8–14 px, three paths
    that never touch are rare). Where make_video finds no paths that fit (rare), the clip is
    drawn again from (seed, index + k·10⁹), k = 1, 2, …: still a function of (seed, index)."""
    rng = np.random.default_rng([int(seed), int(index), 7])
    n_objects = world.n_objects_for(rng) if n_objects is None else n_objects
    shapes = None
    if n_objects == 3:
        colours = rng.choice(list(world.COLORS), size=3, replace=False)
        shapes = [world.Shape(str(c), str(rng.choice(world.SHAPES)), float(rng.uniform(*THREE_RADIUS))) for c in colours]
    for attempt in range(100):
        try:
            return world.make_video(seed, index + attempt * 10 ** 9, n_frames=n_frames, n_objects=n_objects, shapes=shapes)
        except ValueError:
            continue
    raise ValueError(f"no clip of {n_objects} objects fits for seed {seed}, index {index}")


def clip_tensor(samples: list[world.Sample]) -> torch.Tensor:
    """Samples → (B, 3, F, H, W) in [-1, 1] (the VAE's layout)."""
    return world.to_tensor(np.stack([s.frames for s in samples])).movedim(1, 2)


def cell_coverage(masks: np.ndarray, n_frames: int) -> np.ndarray:
    """Per object (J, F, H, W bool) → (J, T, 8, 8) fraction of each token the object covers
    in any pixel frame of that latent frame (the union, as a region on the token grid is)."""
    groups = latent_frame_groups(n_frames)
    union = np.stack([masks[:, g].any(1) for g in groups], 1)  # (J, T, H, W)
    j, t = union.shape[:2]
    return union.reshape(j, t, GRID, TOKEN_PX, GRID, TOKEN_PX).mean((3, 5))


def box_coverage(boxes: np.ndarray, n_frames: int) -> np.ndarray:
    """Per object (J, F, 4 boxes) → (J, T, 8, 8) fraction of each cell inside the union of the
    latent frame's pixel-frame boxes."""
    groups = latent_frame_groups(n_frames)
    out = np.zeros((len(boxes), len(groups), SIZE, SIZE), bool)
    for j in range(len(boxes)):
        for t, g in enumerate(groups):
            for f in g:
                x1, y1, x2, y2 = boxes[j, f]
                out[j, t, y1:y2, x1:x2] = True
    return out.reshape(len(boxes), len(groups), GRID, TOKEN_PX, GRID, TOKEN_PX).mean((3, 5))


# =============================================================================== attn2 recorder

class PaddingBias:
    """Stands in for WanPipeline's 512-position zero padding with a few padding positions.

    Every padding position has the same (zero) text state, hence the same key and value in
    attn2: n of them weigh in the softmax as one of them with its logit raised by ln n. Training
    pads the text to `short` positions and raises each padding logit by ln((full − r) / (short − r))
    (r real tokens), so the attention, the output and the real tokens' maps are those of the full
    padding — at a fraction of the cost (the 512 keys were half a training step)."""

    def __init__(self):
        self.bias = None  # (B, short) added to the attn2 logits, or None (no shortening)

    def set(self, mask: torch.Tensor, short: int, full: int = PIPELINE_TEXT_LENGTH) -> None:
        """mask (B, ≤ short) of the real tokens."""
        real = mask.sum(1).to(torch.float64)
        if (real >= short).any():
            raise ValueError(f"the short padding ({short}) must leave at least one padding position")
        pos = torch.arange(short)[None]
        count = torch.log((full - real) / (short - real))[:, None]
        self.bias = torch.where(pos >= real[:, None], count, torch.zeros(())).float()


class CrossAttentionRecorder:
    """A processor for a Wan block's attn2 (text cross-attention) that computes the attention
    probabilities itself — WanAttnProcessor dispatches to SDPA and never forms them — and, while
    `store` is a list, appends them averaged over heads: (B, tokens, text length). The output is
    the same attention (softmax(q·kᵀ/√d)·v after norm_q/norm_k and the head split), so a model
    runs the same with it; gradients flow through the stored maps (the attention loss).
    `padding` (a PaddingBias) adds its logit bias for a shortened padding."""

    def __init__(self, store: list | None = None, padding: PaddingBias | None = None):
        self.store = store
        self.padding = padding

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attn.add_k_proj is not None:
            raise ValueError("the recorder handles text-to-video attn2 only (no image context)")
        if encoder_hidden_states is None:
            raise ValueError("the recorder is for attn2 (cross-attention); attn1 has no text")
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        k = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        v = attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.padding is not None and self.padding.bias is not None:
            scores = scores + self.padding.bias[:, None, None, :].to(scores.dtype)
        probs = scores.softmax(-1)
        if self.store is not None:
            self.store.append(probs.mean(1))
        out = (probs @ v).transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def install_recorders(transformer, blocks: list[int], store: list, padding: PaddingBias | None = None) -> dict:
    """Put a recorder on attn2 of each listed block (and, with `padding`, a non-recording one with
    the padding bias on every other block's attn2); returns the previous processors (to restore)."""
    old = dict(transformer.attn_processors)
    names = [f"blocks.{b}.attn2.processor" for b in blocks]
    missing = [n for n in names if n not in old]
    if missing:
        raise ValueError(f"attention blocks: the transformer has no {missing[0]} ({len(transformer.blocks)} blocks)")
    rec = CrossAttentionRecorder(store, padding)
    new = {n: rec for n in names}
    if padding is not None:
        plain = CrossAttentionRecorder(None, padding)
        new.update({n: plain for n in old if n.endswith("attn2.processor") and n not in new})
    transformer.set_attn_processor({**old, **new})
    return old


def word_box_mass(maps: torch.Tensor, tok: int, cover: torch.Tensor) -> torch.Tensor:
    """maps (N tokens = T·8·8, L) of one clip; tok a text index; cover (T, 8, 8) in [0, 1]: per
    latent frame, the word's attention normalised over the frame's cells, then its mass on the
    cover (weighted by how much of each cell it covers). Returns (T,)."""
    t = cover.shape[0]
    a = maps[:, tok].reshape(t, -1)
    p = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    return (p * cover.reshape(t, -1).to(p.dtype)).sum(-1)


# =============================================================================== export

def save_pipeline(folder: Path, tokenizer, text_encoder, vae, transformer, extra: dict | None = None) -> None:
    """Write the diffusers Wan layout (model_index.json and one folder per component) to `folder`."""
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=build_scheduler())
    pipe.save_pretrained(folder, safe_serialization=True)
    if extra:
        (Path(folder) / "training.json").write_text(json.dumps(extra, indent=1, default=list))
