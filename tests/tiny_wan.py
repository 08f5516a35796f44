"""Tiny random Wan components for CPU tests without a hub (DESIGN §5's configs).

`tiny_wan_components(two_experts=False)` builds a `WanPipeline`'s components: a word-level
tokenizer (a `PreTrainedTokenizerFast` over a `tokenizers.Tokenizer` built here, T5-style: no
start token, `</s>` at the end, `<pad>` = 0), a small `UMT5EncoderModel`, `AutoencoderKLWan`,
`WanTransformer3DModel` (one token = 16 × 16 px: patch 2 × VAE 8) and a flow-matching Euler
scheduler; with `two_experts` a second transformer and `boundary_ratio` (Wan 2.2 A14B's layout).
`save_tiny_wan(folder, …)` writes them in the diffusers layout (model_index.json naming
`WanPipeline`), so the tests exercise the real `from_pretrained` loading code.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The words the tiny tokenizer knows; anything else is <unk>.
WORDS = ("a red green blue yellow circle square triangle star cat dog bird fish polar bear white brown on in the "
         "sea water gray background and of swims jumps two dolphins dolphin shark boat "
         # configs/dolphins-wan.yaml's prompts
         "A Two jellyfish goldfish octopus turtle are swimming blue ocean .").split()

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
# A Wan-layout VAE that compresses 4× in space (the shapes-world Wan model's kind): with patch 2, 8-px tokens
TINY_VAE_4X = dict(base_dim=3, z_dim=16, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True],
                   scale_factor_spatial=4)
MAX_SEQUENCE_LENGTH = 512  # WanPipeline's default: the embeddings are zero-padded to it


def tiny_wan_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation apart
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_SEQUENCE_LENGTH)


def tiny_wan_components(two_experts: bool = False, seed: int = 0, vae_config: dict | None = None) -> dict:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_wan_tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                               vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1)).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(**(vae_config or TINY_VAE)).eval()
    torch.manual_seed(seed + 2)
    transformer = WanTransformer3DModel(**TINY_TRANSFORMER).eval()
    components = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                      scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer_2=None, boundary_ratio=None)
    if two_experts:
        torch.manual_seed(seed + 3)
        components.update(transformer_2=WanTransformer3DModel(**TINY_TRANSFORMER).eval(), boundary_ratio=0.875)
    return components


def save_tiny_wan(folder, two_experts: bool = False, seed: int = 0, vae_config: dict | None = None) -> Path:
    """The tiny components saved by `WanPipeline.save_pretrained` (the diffusers layout)."""
    from diffusers import WanPipeline

    folder = Path(folder)
    WanPipeline(**tiny_wan_components(two_experts, seed, vae_config)).save_pretrained(folder)
    return folder


def tiny_clip(n_frames: int = 5, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    """A smooth random clip (F, 3, H, W) in [-1, 1]: a drifting gradient with a bright square."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, height)[:, None]
    xs = torch.linspace(-1, 1, width)[None, :]
    frames = []
    base = torch.rand(3, 1, 1, generator=g) * 0.6 - 0.3
    for f in range(n_frames):
        img = base + 0.4 * torch.stack([xs + 0 * ys, ys + 0 * xs, (xs + ys) / 2]) * (1 + 0.1 * f)
        x0 = 4 + 2 * f
        img[:, 8:20, x0 : x0 + 12] = 0.8
        frames.append(img.clamp(-1, 1))
    return torch.stack(frames)
