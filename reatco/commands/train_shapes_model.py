"""Train the shapes-world latent diffusion model (a tiny Stable Diffusion) on CPU, in resumable chunks.

Stages (reatco/toy/training.py explains each; run in this order, each resuming from --work with
--resume): vae (the autoencoder), unet (UNet + text encoder, exported to --out as it goes), vae
--decoder_only (the decoder alone, optionally on joined latents: --composite), export (the SD
layout from the latest checkpoints) and export_vae (only vae/ of --out, after --decoder_only).

Example (background, 2 cores shared; one thread per process is faster than two under contention):
  nohup nice -n 5 python scripts/train_shapes_model.py --stage vae --max_minutes 25 --resume \
      > data/shapes-train/train_vae.log 2>&1 &
  nohup nice -n 5 python scripts/train_shapes_model.py --stage unet --max_minutes 100 --resume \
      > data/shapes-train/train.log 2>&1 &
  nohup nice -n 5 python scripts/train_shapes_model.py --stage vae --decoder_only --resume ... &
The shipped model's decoder was then fine-tuned on joined latents, in chunks like these (its
training.json lists every command, with the chunks stopped early and the one discarded):
  python scripts/train_shapes_model.py --stage vae --decoder_only --init_vae data/shapes-model --work W \
      --max_minutes 45 --vae_lr 3e-4 --vae_lr_end 1e-5 --vae_batch 32 --composite 0.75 --composite_perturb 0.5 \
      --target_psnr 99 --threads 1
  python scripts/train_shapes_model.py --stage vae --decoder_only --resume --work W --max_minutes 22 \
      --vae_lr 1e-4 --vae_lr_end 5e-6 --vae_batch 32 --composite 0.75 --composite_perturb 0.5 \
      --composite_seam_weight 4 --target_psnr 99 --threads 1
  python scripts/train_shapes_model.py --stage vae --decoder_only --resume --work W --max_minutes 30 \
      --vae_lr 8e-5 --vae_lr_end 5e-6 --vae_batch 32 --composite 0.75 --composite_perturb 0.5 \
      --composite_seam_weight 8 --target_psnr 99 --threads 1
  python scripts/train_shapes_model.py --stage export_vae --work W --out data/shapes-model
"""

from __future__ import annotations

import argparse
import sys

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below


def parse_args(argv=None):
    # the defaults are reatco.toy.training.TrainSettings'
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--stage", choices=["vae", "unet", "export", "export_vae"], required=True)
    p.add_argument("--max_minutes", type=float, help="stop this chunk after this long")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    p.add_argument("--out")
    p.add_argument("--work")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, default=1, help="1 beats 2 on a shared 2-core machine")
    p.add_argument("--vae_lr", type=float)
    p.add_argument("--vae_batch", type=int)
    p.add_argument("--vae_pool", type=int)
    p.add_argument("--vae_kl", type=float)
    p.add_argument("--target_psnr", type=float)
    p.add_argument("--decoder_only", action="store_true", help="VAE stage: freeze the encoder (after the UNet started)")
    p.add_argument("--init_vae",
                   help="VAE stage: start from this exported model's vae/ (with its training.json), not --work")
    p.add_argument("--vae_lr_end", type=float, help="VAE: anneal linearly to this over --max_minutes")
    p.add_argument("--composite", type=float,
                   help="VAE: fraction of each batch decoded from two images' latents joined along a latent-grid "
                        "rectangle, against the same join of their pixels")
    p.add_argument("--composite_seam_weight", type=float,
                   help="VAE: extra loss weight on the outside pixels within 2 px of a join's seam")
    p.add_argument("--composite_perturb", type=float,
                   help="VAE: fraction of the joins whose inside latent gets a random gain ×1–1.6 and no pixel target")
    p.add_argument("--n_images", type=int, help="UNet training set size")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr_end", type=float,
                   help="UNet: anneal linearly from --lr to this over --max_minutes (last chunk)")
    p.add_argument("--ema", type=float)
    p.add_argument("--cfg_drop", type=float, help="caption dropout (classifier-free guidance)")
    p.add_argument("--attn_weight", type=float,
                   help="weight of the 8×8 attention-localisation loss (0 = plain SD objective)")
    p.add_argument("--token_attn_weight", type=float,
                   help="weight of the token-share loss: object words' share of the prompt attention on the object")
    p.add_argument("--export_every", type=float, help="minutes between exports")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = vars(parse_args(argv))
    import torch

    from reatco.errors import ConfigError
    from reatco.toy import training

    torch.set_num_threads(args.pop("threads"))
    stage = args.pop("stage")
    command = "python " + " ".join(sys.argv if argv is None else ["scripts/train_shapes_model.py", *argv])
    try:
        training.run_stage(stage, training.TrainSettings(**args), command)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def command() -> int:
    """Entry point of `reatco-train-shapes` and of scripts/train_shapes_model.py."""
    from reatco.toy.training import stop_on_signals

    stop_on_signals()  # Ctrl-C / SIGTERM: finish the step, checkpoint (and export), exit
    return main()


if __name__ == "__main__":  # python -m reatco.commands.train_shapes_model: this checkout's reatco, from its root
    raise SystemExit(command())
