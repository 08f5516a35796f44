"""The shapes bench's sections on the Wan-layout shapes model (`data/shapes-wan`; `reatco.bench.shapes`
runs them with `--backbone wan`): the model's own gates are reatco/toy/wan_eval.py's, the same ones
the training reads on its checkpoints, on the bench's held-out seed; editing is the UNet model's
editing section (reatco/bench/shapes_editing.py) on `WanReAtCoPipeline`.

  vae          PSNR of encode → decode on held-out 9-frame clips (gate ≥ 30 dB)
  text2image   text → video: WanPipeline samples (9 frames) for the held-out captions, every frame
               checked by the detector (gate ≥ 90 % of frames)
  attention    each object word's attn2 mass in its box per latent frame at σ = 0.5 on the blocks
               the model was trained to localise (gate ≥ 0.8), and at σ = 0.25 / 0.75
  editing      as on the UNet model, 4k + 1-frame cases
  regions      as on the UNet model: regions found by the model's own attn2 on the source clip
"""

from __future__ import annotations

import json
from pathlib import Path

from .shapes_editing import edit_gate, regions_gate


def load_pipe(model: str):
    """diffusers' own WanPipeline of the folder (its shipped UniPC scheduler: the model's gates
    are judged on the model as it ships)."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attention_blocks(model: str, num_layers: int) -> list[int]:
    """The blocks whose attn2 the model was trained to localise (its training.json), else the
    editing default for its depth."""
    info = Path(model) / "training.json"
    if info.is_file():
        blocks = json.loads(info.read_text()).get("attention_blocks")
        if blocks:
            return [int(b) for b in blocks]
    from ..backbones.wan.backbone import default_rad_blocks

    return default_rad_blocks(num_layers)


def vae_gate(args, pipe) -> dict:
    from ..toy.wan_eval import vae_gate as gate

    return gate(pipe, args.seed, args.n_vae)


def text2video_gate(args, pipe) -> dict:
    from ..toy.wan_eval import text2video_gate as gate

    return gate(pipe, args.seed, args.n, args.steps, args.cfg, batch=args.batch)


def attention_gate(args, pipe) -> dict:
    from ..toy.wan_eval import attention_gate as gate

    return gate(pipe, attention_blocks(args.model, len(pipe.transformer.blocks)), args.seed, args.n_attn)


SECTIONS = {"vae": vae_gate, "text2image": text2video_gate, "attention": attention_gate, "editing": edit_gate,
            "regions": regions_gate}
