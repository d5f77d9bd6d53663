"""``diffrep train-vae``: an autoencoder for latent diffusion (``diffrep train --space vae:OUT``)."""

from __future__ import annotations

import sys
from pathlib import Path

from diffrep.cli.common import (COMMANDS, FORMATTER, examples, finite_float, non_negative_int, parents, positive_float,
                                positive_int, startup, write_json)


def register(sub) -> None:
    from diffrep.latent.autoencoder import VAE_PRESETS
    from diffrep.latent.train_vae import VaeConfig

    d = VaeConfig()
    p = sub.add_parser("train-vae", help=COMMANDS["train-vae"][1], formatter_class=FORMATTER,
                       parents=parents(precision="net", seed=d.seed, batch_size=d.batch_size,
                                       batch_help="images per step"),
                       description="Train a KL autoencoder (diffusers' AutoencoderKL, LDM's objective) whose latent "
                                   "space a diffusion model can then train in. Needs the latent extra: "
                                   'pip install -e ".[latent]".',
                       epilog=examples("diffrep train-vae --data mnist5k --latent 4x8x8 --out runs/vae",
                                       "diffrep train-vae --out runs/vae --steps 4000 --resume   # extend it",
                                       "diffrep train --space vae:runs/vae --model DiT-T/2 --out runs/latent"))
    p.add_argument("--out", required=True, type=Path, help="the VAE run folder (its EMA weights go to OUT/vae, a "
                   "diffusers folder)")
    p.add_argument("--data", default=d.data, help=f"mnist5k | digits | a folder of images | an .npz (default {d.data})")
    p.add_argument("--image-size", type=positive_int, help="resize a folder's images to this square size")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--latent", default=d.latent, help=f"latent channels×height×width (default {d.latent}: 4 channels, "
                   "4× smaller than 32×32 images)")
    p.add_argument("--preset", choices=list(VAE_PRESETS), default=d.preset, help=f"VAE size (default {d.preset}, "
                   "0.23M parameters at one channel)")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--warmup", type=non_negative_int, default=d.warmup, help=f"warm-up steps (default {d.warmup})")
    p.add_argument("--kl-weight", type=finite_float, default=d.kl_weight,
                   help=f"weight of the KL term against the summed squared error (default {d.kl_weight}, LDM's)")
    p.add_argument("--ema-decay", type=finite_float, default=d.ema_decay, help=f"EMA decay (default {d.ema_decay})")
    p.add_argument("--ckpt-every", type=positive_int, default=d.ckpt_every,
                   help=f"checkpoint and export every N steps (default {d.ckpt_every})")
    p.add_argument("--log-every", type=positive_int, default=d.log_every,
                   help=f"log every N steps (default {d.log_every})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the VAE run in --out and start a new one")
    p.set_defaults(handler=cmd_train_vae)


def cmd_train_vae(a) -> int:
    from diffrep.data import BUILTIN
    from diffrep.latent.autoencoder import require_diffusers
    from diffrep.latent.train_vae import VaeConfig, VaeTrainer, reconstruction_floor

    require_diffusers()
    cfg = VaeConfig(data=a.data, image_size=a.image_size, hflip=a.hflip, latent=a.latent, preset=a.preset,
                    steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, kl_weight=a.kl_weight,
                    ema_decay=a.ema_decay, precision=a.precision, seed=a.seed, ckpt_every=a.ckpt_every,
                    log_every=a.log_every)
    trainer = VaeTrainer(cfg, a.out, resume=a.resume, overwrite=a.overwrite, device=a.device,
                         progress=not a.no_progress)
    print(trainer.describe(), file=sys.stderr)
    startup(trainer.precision)
    step = trainer.run()
    print(f"trained {step} steps → {a.out} (diffusers folder {a.out}/vae, reconstructions.png, metrics.jsonl, tb/)")
    if cfg.data in BUILTIN:
        floor = reconstruction_floor(a.out, cfg.data, a.device)
        write_json(a.out / "reconstruction.json", floor)
        print(f"reconstruction floor on {floor['data']}: reference accuracy {floor['accuracy']:.1%}, rFD_ref "
              f"{floor['fd_ref']:.2f} (train vs test {floor['fd_ref_train_vs_test']:.2f}), MSE {floor['mse']:.4f}")
    return 0
