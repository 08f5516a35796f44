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

--backbone wan trains the Wan-layout model of data/shapes-wan (reatco/toy/wan_training.py: stages vae,
data, transformer, decoder (the decoder fine-tuned on joined latents, encoder frozen), all, export, eval; every stage checkpoints and --resume continues it exactly;
`--backbone wan --help` lists its flags). The command that trains it in the background:
  OMP_NUM_THREADS=1 setsid nohup nice -n 15 python scripts/train_shapes_model.py --backbone wan --stage all \\
      --resume --work ~/.cache/reatco/shapes-wan-train --out ~/.cache/reatco/shapes-wan-train/export \\
      > ~/train-wan.log 2>&1 &
"""

from __future__ import annotations

import argparse
import sys

from reatco.cli import help_without_imports  # noqa: E402

help_without_imports(__file__)  # --help at once, before the heavy imports below


def wan_parser() -> argparse.ArgumentParser:
    # the defaults are reatco.toy.wan_training.WanTrainSettings'
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--backbone", choices=["sd", "wan"], required=True)
    p.add_argument("--stage", choices=["vae", "data", "transformer", "decoder", "all", "export", "eval"], required=True,
                   help="decoder: the VAE's decoder fine-tuned on joined latents, encoder frozen; "
                        "all: vae → data → transformer → decoder, each resumed where it stands")
    p.add_argument("--max_minutes", type=float, help="stop this command after this long (default: run to the end)")
    p.add_argument("--stop_after", type=int, help="stop each stage after this many steps of this command")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    p.add_argument("--out", help="the Wan pipeline folder that export writes (default data/shapes-wan)")
    p.add_argument("--work", help="checkpoints, the data set and commands.log (default data/shapes-wan-train)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--checkpoint_minutes", type=float, help="minutes between checkpoints (and at every stop)")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--vae_config", help="JSON fields over the AutoencoderKLWan config (tests use tiny ones)")
    p.add_argument("--transformer_config", help="JSON fields over the WanTransformer3DModel config")
    p.add_argument("--vae_steps", type=int, help="VAE: step budget (the cosine learning rate ends there)")
    p.add_argument("--vae_lr", type=float)
    p.add_argument("--vae_lr_end", type=float)
    p.add_argument("--vae_warmup", type=int)
    p.add_argument("--vae_batch", type=int)
    p.add_argument("--vae_pool", type=int, help="VAE: clips in the training pool")
    p.add_argument("--vae_frames", type=int, help="VAE: frames of a training window (4k + 1)")
    p.add_argument("--vae_crop", type=int, help="VAE: side of a training crop in px (a multiple of the VAE's 4 px cell)")
    p.add_argument("--vae_kl", type=float)
    p.add_argument("--vae_ema", type=float)
    p.add_argument("--target_psnr", type=float, help="VAE: stop when the EMA's held-out PSNR reaches this")
    p.add_argument("--vae_eval_every", type=int)
    p.add_argument("--vae_eval_clips", type=int)
    p.add_argument("--n_clips", type=int, help="data: 9-frame training clips")
    p.add_argument("--n_long_clips", type=int, help="data: 17-frame training clips")
    p.add_argument("--steps", type=int, help="transformer: step budget (the cosine learning rate ends there)")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr_end", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ema", type=float)
    p.add_argument("--cfg_drop", type=float, help="caption dropout (classifier-free guidance)")
    p.add_argument("--attn_weight", type=float, help="weight of the words' attention-on-their-object loss")
    p.add_argument("--token_attn_weight", type=float, help="weight of the object words' share-of-the-prompt loss")
    p.add_argument("--long_every", type=int, help="every n-th step a batch of 17-frame clips (0: never)")
    p.add_argument("--export_every", type=int, help="transformer steps between exports to --out")
    p.add_argument("--decoder_steps", type=int, help="decoder: step budget (the cosine learning rate ends there)")
    p.add_argument("--decoder_lr", type=float)
    p.add_argument("--decoder_lr_end", type=float)
    p.add_argument("--decoder_warmup", type=int)
    p.add_argument("--decoder_batch", type=int)
    p.add_argument("--decoder_join", type=float, help="decoder: share of each batch decoded from joined latents")
    p.add_argument("--decoder_ema", type=float)
    p.add_argument("--decoder_eval_every", type=int)
    p.add_argument("--eval_model", help="eval: this Wan pipeline folder instead of the checkpoints in --work")
    p.add_argument("--eval_clips", type=int, help="eval: held-out clips for the VAE's PSNR")
    p.add_argument("--eval_samples", type=int, help="eval: text-to-video samples")
    p.add_argument("--eval_steps", type=int, help="eval: sampling steps")
    p.add_argument("--eval_cfg", type=float, help="eval: guidance scale")
    p.add_argument("--eval_attention_clips", type=int, help="eval: clips for the attention mass")
    return p


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--backbone", choices=["sd", "wan"], default="sd")
    if pre.parse_known_args(argv)[0].backbone == "wan":
        return wan_parser().parse_args(argv)
    # the defaults are reatco.toy.training.TrainSettings'
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--backbone", choices=["sd", "wan"], help="sd (default): the UNet model; wan: the DiT model")
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
        if args.pop("backbone", "sd") == "wan":
            from reatco.toy import wan_training

            wan_training.run_stage(stage, wan_training.WanTrainSettings(**args), command)
        else:
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
