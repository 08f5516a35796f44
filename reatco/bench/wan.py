"""What a ReAtCo edit costs on Wan 2.1 (1.3B and 14B), measured on random weights and scaled.

Memory. A stage's own memory is the peak of the tensors alive while it runs, above those alive
before it (`LiveTensorMeter`: every tensor an op creates is counted until its storage is freed —
what `torch.cuda.max_memory_allocated` reports on a GPU, without the allocator's slack). On a CPU the
transformer runs at Wan's full width but with 2 blocks and a few hundred tokens; each stage is
measured at two token counts and fitted as fixed + per-token, then scaled to the target clip's
tokens (81 × 480 × 832 → 21 × 30 × 52 = 32,760) and to the blocks a pass holds:
  * cfg_step: one forward without gradients (peak transient, independent of depth);
  * rad_pass: RAD's forward to the last recorded block and its backward (`RADGuidance.forward` on a
    `WanBackbone` and its gradient, weights frozen): peak(b blocks) = b·S + T, S what a block keeps when the
    forward ends (passes over 1 and 2 blocks), T the rest of the peak;
  * rad_pass_checkpointed: the same with gradient checkpointing per block: b·I + T'.
The measurements run in bfloat16, the target dtype, so only tokens and blocks are scaled (labelled
estimated). Attention runs through PyTorch's flash kernel on the CPU too (forced), linear in the
tokens as on a GPU. VAE: AutoencoderKLWan's architecture (random weights) encodes and decodes causally, a few
frames at a time; its peak is fitted on pixels per frame (two sizes) and taken as the target
frame's. Weights: parameter counts on the meta device × 2 bytes.

Time. The ratio of a whole edit to plain WanPipeline sampling of the same clip, counted in
transformer-block forwards (FLOPs at the target's tokens, `pass_cost_flops`): sampling is steps × 2
(CFG) × L blocks; the edit adds the inversion (steps × (1 + fixed-point iterations) × L) and the RAD
passes (RAD steps × a pass over b blocks: forward, the input-only backward of the frozen linear
layers (1× their forward), flash attention's backward (≈ 2.5× its forward), and with checkpointing
one more forward). The VAE and the text encoder are the same in both and left out. Refinement
iterations add passes at the refinement steps (`refinement_passes`; 0 when every word holds its
threshold; the official cap is 20 at each of 3 steps). CPU seconds at a few hundred tokens are not
used: the 512 text tokens' projections and the shared machine's noise dominate them.
"""

from __future__ import annotations

import gc
import time
import weakref
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..backbones.wan.known_models import KNOWN_WAN_MODELS, TRANSFORMER_COMMON, WAN21_VAE

# the released models' architectures: one record, shared with the dry run (backbones/wan/known_models.py)
WAN_TRANSFORMERS = {m.size: dict(m.transformer) for m in KNOWN_WAN_MODELS if m.size in ("1.3B", "14B")}
_COMMON = TRANSFORMER_COMMON
WAN_VAE = WAN21_VAE
UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=256384, feed_forward_proj="gated-gelu")
TARGET = (81, 480, 832)  # frames, height, width
TEXT_TOKENS = 512
GB = 1024**3


class LiveTensorMeter(TorchDispatchMode):
    """Peak bytes of the tensors created inside (each storage counted once, until it is freed).
    `known`: tensors alive before (the weights), whose storages are never counted — an op's view
    of one (a linear layer's transposed weight) would otherwise count the whole weight as new."""

    def __init__(self, known=()):
        super().__init__()
        self.live: dict[int, int] = {t.untyped_storage().data_ptr(): 0 for t in known}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self.live or storage.nbytes() == 0:
                    continue
                self.live[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._freed, key)
        return out

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def parameter_count(cls, **config) -> int:
    with torch.device("meta"):
        model = cls(**config)
    return sum(p.numel() for p in model.parameters())


def weights_gb(dtype_bytes: int = 2) -> dict:
    """Resident weights of each model at `dtype_bytes` a parameter."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    out = {f"transformer_{k}": parameter_count(WanTransformer3DModel, **_COMMON, **v) * dtype_bytes / GB
           for k, v in WAN_TRANSFORMERS.items()}
    out["vae"] = parameter_count(AutoencoderKLWan, **WAN_VAE) * dtype_bytes / GB
    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
    out["text_encoder_umt5_xxl"] = sum(p.numel() for p in encoder.parameters()) * dtype_bytes / GB
    return out


def _measure(fn) -> tuple[float, float]:
    """(own peak bytes, seconds) of fn()."""
    gc.collect()
    meter = LiveTensorMeter()
    start = time.perf_counter()
    with meter:
        result = fn()
        del result
    return float(meter.peak), time.perf_counter() - start


@dataclass
class TransformerFit:
    """Per-token bytes of each stage (bf16)."""

    arch: str
    forward_per_token: float  # cfg_step's transient (one call)
    rad_block_per_token: float  # S: kept for the backward when the forward ends, per block in the pass
    rad_transient_per_token: float  # T: the rest of the pass's peak (the backward)
    ckpt_block_per_token: float  # I: the same with checkpointing (a block's input)
    ckpt_transient_per_token: float  # T': the backward's recomputation
    tokens: tuple[int, int]


def measure_transformer(arch: str, grids=((2, 16, 16), (4, 16, 16)), dtype=torch.float32, seed: int = 0,
                        target_bytes: int = 2) -> TransformerFit:
    """Measure a 2-block model of `arch`'s width at two token grids (latent frames, h, w), in
    `dtype` (float32: a CPU's fast path), bytes scaled to `target_bytes` per element (bf16: 2)."""
    from diffusers import WanTransformer3DModel

    from ..backbones.wan.backbone import WanBackbone
    from ..config import section_settings
    from ..rad.guidance import RADGuidance

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**_COMMON, **{**WAN_TRANSFORMERS[arch], "num_layers": 2}).to(dtype).eval()
    text = torch.zeros(1, TEXT_TOKENS, 4096, dtype=dtype)
    text[:, :12] = torch.randn(1, 12, 4096, dtype=dtype)  # a 12-token prompt, zero-padded as WanPipeline pads
    rows = []
    # a flash kernel, as on a GPU: attention memory linear in the tokens (the CPU's default math
    # kernel would keep the N × N scores, which Wan on a GPU never forms)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for frames, h, w in grids:
            x = torch.randn(1, 16, frames, h, w, dtype=torch.float32)
            t = torch.tensor(900.0)
            tokens = frames * (h // 2) * (w // 2)
            backbone = WanBackbone(model)
            with torch.no_grad():
                forward, forward_s = _measure(lambda: backbone.predict(x, t, text))
            masks = torch.zeros(1, frames, h // 2, w // 2)
            masks[..., : h // 4, : w // 4] = 1
            row = {"tokens": tokens, "forward": forward, "forward_s": forward_s}
            for ckpt in (False, True):
                for blocks in ([0], [1]):
                    rad = section_settings("rad", {"gradient_checkpointing": ckpt, "refinement_thresholds": {}}, steps=50)
                    layers = backbone.attention_layers(16, blocks=blocks)
                    guidance = RADGuidance(backbone, layers, text, ["w"], [[3]], masks, rad, 11, 50)
                    with guidance.attached():
                        row[(ckpt, blocks[0] + 1)] = _measure_pass(guidance, x, t)
            rows.append(row)

    def slope(values):  # per-token slope through the two grids
        (n1, v1), (n2, v2) = values
        return (v2 - v1) / (n2 - n1)

    def per_token(key, part):
        return slope([(r["tokens"], r[key][part]) for r in rows])

    scale = target_bytes / torch.tensor([], dtype=dtype).element_size()
    fwd = slope([(r["tokens"], r["forward"]) for r in rows]) * scale
    # what a pass keeps per block when its forward ends (S; I checkpointed): the 2-block pass minus
    # the 1-block one; the rest of the peak (the backward's transient) from the 2-block pass
    saved = (per_token((False, 2), "kept") - per_token((False, 1), "kept")) * scale
    kept_ckpt = (per_token((True, 2), "kept") - per_token((True, 1), "kept")) * scale
    transient = per_token((False, 2), "peak") * scale - 2 * saved
    transient_ckpt = per_token((True, 2), "peak") * scale - 2 * kept_ckpt
    # Time is not fitted here: at a few hundred tokens the 512 text tokens' projections and the
    # shared CPU's noise dominate the seconds; `estimate` counts FLOPs at the target instead.
    return TransformerFit(arch, fwd, saved, transient, kept_ckpt, transient_ckpt, tuple(r["tokens"] for r in rows))


def _measure_pass(guidance, x, t) -> dict:
    """A RAD pass and its update (`RADGuidance.forward`, then the gradient): bytes kept when the
    forward ends, the peak, the seconds."""
    gc.collect()
    meter = LiveTensorMeter()
    start = time.perf_counter()
    with meter:
        step = guidance.forward(x, t)
        kept = meter.current
        grad = step.grad()
        del step, grad
    return {"kept": float(kept), "peak": float(meter.peak), "seconds": time.perf_counter() - start}


def measure_vae(sizes=((5, 32, 32), (5, 64, 64)), dtype=torch.float32, seed: int = 0, target_bytes: int = 2) -> dict:
    """Peak bytes per pixel of a frame of AutoencoderKLWan's encode and decode (5 frames, two
    sizes), scaled to `target_bytes` per element."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**WAN_VAE).to(dtype).eval()
    rows = []
    with torch.no_grad():
        for frames, h, w in sizes:
            video = torch.rand(1, 3, frames, h, w, dtype=dtype) * 2 - 1
            encode, encode_s = _measure(lambda: vae.encode(video).latent_dist.mode())
            z = vae.encode(video).latent_dist.mode()
            decode, decode_s = _measure(lambda: vae.decode(z).sample)
            rows.append({"pixels": h * w, "frames": frames, "encode": encode, "decode": decode})
    scale = target_bytes / torch.tensor([], dtype=dtype).element_size()
    (p1, r1), (p2, r2) = [(r["pixels"], r) for r in rows]
    return {k: (r2[k] - r1[k]) / (p2 - p1) * scale for k in ("encode", "decode")} | {
        f"{k}_fixed": (r1[k] - (r2[k] - r1[k]) / (p2 - p1) * p1) * scale for k in ("encode", "decode")}


def block_flops(arch: str, tokens: int, text_tokens: int = TEXT_TOKENS) -> dict:
    """Multiply-add FLOPs (×2) of one block's forward: the linear layers and the two attentions."""
    a = WAN_TRANSFORMERS[arch]
    d = a["num_attention_heads"] * a["attention_head_dim"]
    linear = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * a["ffn_dim"]) + 2 * text_tokens * 2 * d * d
    attention = 4 * tokens * tokens * d + 4 * tokens * text_tokens * d
    return {"linear": float(linear), "attention": float(attention)}


def pass_cost_flops(arch: str, tokens: int, checkpointed: bool, attention_backward: float = 2.5) -> float:
    """A RAD pass (forward + backward to the input, weights frozen) in block forwards at `tokens`:
    the linear layers' backward computes only the input gradient (1× their forward), flash
    attention's backward ≈ 2.5× its forward (it recomputes the scores); checkpointing adds one forward."""
    f = block_flops(arch, tokens)
    forward = f["linear"] + f["attention"]
    backward = f["linear"] + attention_backward * f["attention"]
    return (forward * (2 if checkpointed else 1) + backward) / forward


def rad_pass_blocks(num_layers: int, blocks=None) -> int:
    """Blocks a RAD pass runs: up to the last recorded one (default_rad_blocks when None)."""
    from ..backbones.wan.backbone import default_rad_blocks

    return max(blocks or default_rad_blocks(num_layers)) + 1


def estimate(fit: TransformerFit, vae: dict, weights: dict, steps: int = 50, rad_steps: int = 25,
             refinement_passes: int = 0, fixed_point_iters: int = 0, blocks=None, target=TARGET) -> dict:
    """The whole 81 × 480 × 832 bf16 edit on `fit.arch`: each stage's peak (GB) with the resident
    weights, and the time against plain sampling."""
    frames, height, width = target
    latent_frames = (frames - 1) // 4 + 1
    lat_h, lat_w = height // 8, width // 8
    tokens = latent_frames * (lat_h // 2) * (lat_w // 2)
    layers = WAN_TRANSFORMERS[fit.arch]["num_layers"]
    b = rad_pass_blocks(layers, blocks)
    latent_bytes = 16 * latent_frames * lat_h * lat_w * 4  # float32 latents
    resident = (weights[f"transformer_{fit.arch}"] + weights["vae"]) * GB + latent_bytes * (steps + 1 + 4)  # trajectory + a few
    stages = {
        "encode": vae["encode_fixed"] + vae["encode"] * height * width,
        "inversion_step": fit.forward_per_token * tokens,
        "rad_pass": (b * fit.rad_block_per_token + fit.rad_transient_per_token) * tokens,
        "rad_pass_checkpointed": (b * fit.ckpt_block_per_token + fit.ckpt_transient_per_token) * tokens,
        "cfg_step": fit.forward_per_token * tokens,
        "decode": vae["decode_fixed"] + vae["decode"] * height * width,
    }
    peaks = {k: (resident + v) / GB for k, v in stages.items()}
    plain = steps * 2 * layers
    rad = (rad_steps + refinement_passes) * b
    edit = plain + steps * (1 + fixed_point_iters) * layers
    cost, cost_ckpt = pass_cost_flops(fit.arch, tokens, False), pass_cost_flops(fit.arch, tokens, True)
    return {
        "arch": fit.arch, "tokens": tokens, "rad_pass_blocks": b, "resident_gb": resident / GB,
        "stage_peak_gb": peaks,
        "whole_run_peak_gb": {"checkpointed": max(v for k, v in peaks.items() if k != "rad_pass"),
                              "not_checkpointed": max(v for k, v in peaks.items() if k != "rad_pass_checkpointed")},
        # a RAD pass in block forwards at the target tokens (FLOPs)
        "rad_pass_cost_blocks": {"not_checkpointed": cost, "checkpointed": cost_ckpt},
        "time_vs_plain_sampling": {
            "inversion_checkpointed": (edit + rad * cost_ckpt) / plain,
            "inversion": (edit + rad * cost) / plain,
            "inversion_free_checkpointed": (plain + rad * cost_ckpt) / plain,
            "inversion_free": (plain + rad * cost) / plain,
        },
    }
