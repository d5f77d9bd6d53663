"""``diffrep sample``: draw samples from a trained run into an ADM-layout ``.npz``."""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

from diffrep.cli.common import (COMMANDS, FORMATTER, check_outputs, examples, finite_float, parents, positive_float,
                                positive_int, startup)
from diffrep.errors import DiffrepError


CFG_SUSPICIOUS = 20.0
"""A ``--cfg`` beyond this warns: legal, but no published sampler guides that hard."""


def register(sub) -> None:
    from diffrep.samplers import SAMPLERS

    s = sub.add_parser("sample", help=COMMANDS["sample"][1], formatter_class=FORMATTER,
                       parents=parents(seed=0, batch_size=250, precision="net", outputs=True),
                       epilog=examples("diffrep sample runs/x --n 1000 --sampler euler --steps 50 --out samples.npz "
                                       "--grid grid.png",
                                       "diffrep sample runs/x --n 1000 --sampler dpmpp_2m --steps 20 --cfg 1.5 "
                                       "--cfg-interval 0.1,0.9 --out s.npz",
                                       "diffrep sample runs/x --guidance auto:ckpt=250,w=2 --out auto.npz",
                                       "diffrep sample runs/x --guidance classifier:path=clf.safetensors,scale=2 "
                                       "--out cg.npz",
                                       "diffrep sample runs/x-guidance-student --cfg 1.5 --out one-pass.npz",
                                       "diffrep sample runs/x-4 --out s.npz   # a progressive student: its own steps",
                                       "diffrep sample runs/emb --like some.npz --n 100 --out variations.npz"))
    s.add_argument("run", type=Path, help="run directory written by `diffrep train`")
    s.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=1000,
                   help="number of images (spell it --num-samples under torchrun, whose own options --n would abbreviate)")
    s.add_argument("--sampler", choices=list(SAMPLERS), help="default euler; a progressive student's own, ddim")
    s.add_argument("--steps", type=positive_int, help="grid intervals (Heun uses 2·steps−1 net calls); default 50, "
                   "a progressive student's own")
    s.add_argument("--grid-rho", type=positive_float, help="time grid t_i = t_max·(1 − i/steps)^ρ (edm: its σ grid's ρ); "
                   "default: the process's (1 for flow and vp, 7 for edm)")
    s.add_argument("--cfg", type=finite_float, default=1.0, help="classifier-free guidance scale (1: off)")
    s.add_argument("--cfg-interval", help="lo,hi: guide only for t (σ for edm) in [lo, hi]")
    s.add_argument("--guidance", action="append", default=[], metavar="KIND[:OPT=VAL,…]",
                   help="repeatable, applied in order: cfg:1.5 | cfg:scale=1.5,lo=0.1,hi=0.9 | auto:ckpt=STEP,w=2 | "
                        "auto:run=PATH[@STEP],w=2 | classifier:path=FILE,scale=2 | elucd:path=FILE,scale=2,beta=3 "
                        "(docs/guidance.md)")
    s.add_argument("--labels", default="balanced", help="balanced | random | none | a class index (an embedding-"
                   "conditioned run: the embeddings of balanced or random training images)")
    s.add_argument("--like", type=Path, metavar="IMAGES", help="an embedding-conditioned run: variations of these "
                   "images (an .npz or a folder; sample i is conditioned on image i mod their count)")
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--out", type=Path, required=True, help=".npz: arr_0 uint8 N×H×W×C, arr_1 labels")
    s.add_argument("--grid", type=Path, help="also write a PNG grid of the first 100 samples")
    s.add_argument("--compile", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile the net (falls back to eager if it fails). auto (default): when this process "
                        "draws at least 1,000 images × 50 net calls, where compiling pays for itself (measured: "
                        "docs/sampling.md#compiling); --compile alone: on")
    s.set_defaults(handler=cmd_sample)

    c = sub.add_parser("train-classifier", help=COMMANDS["train-classifier"][1], formatter_class=FORMATTER,
                       parents=parents(seed=1, batch_size=128, outputs=True),
                       description="Train ADM's noise-aware classifier (arXiv 2105.05233) on a class-conditional run's "
                                   "data, space and process, for --guidance classifier:path=OUT.",
                       epilog=examples("diffrep train-classifier runs/qs --out runs/qs/classifier.safetensors",
                                       "diffrep sample runs/qs --guidance "
                                       "classifier:path=runs/qs/classifier.safetensors,scale=2 --out cg.npz"))
    c.add_argument("run", type=Path, help="a class-conditional run directory")
    c.add_argument("--out", type=Path, required=True, help="the classifier's .safetensors")
    c.add_argument("--steps", type=positive_int, default=1500, help="optimiser steps (default 1500)")
    c.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    c.add_argument("--channels", type=positive_int, help="base width (default 32; 24 with --clean)")
    c.add_argument("--t-range", help="lo,hi: train at t in this range only, an expert for one noise range (PPAP); "
                   "guide with it by classifier:path=…,lo=LO,hi=HI")
    c.add_argument("--clean", action="store_true", help="a classifier of clean images (for --guidance elucd:) instead "
                   "of a noise-aware one")
    c.set_defaults(handler=cmd_train_classifier)


def parse_interval(text: str | None, flag: str = "--cfg-interval") -> tuple[float, float] | None:
    """``--cfg-interval lo,hi`` (or ``flag``'s) as a pair, or ``None``."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise DiffrepError(f"{flag} {text!r}: expected two numbers lo,hi such as 0.1,0.9") from None
    if math.isnan(lo) or math.isnan(hi):
        raise DiffrepError(f"{flag} {text!r}: expected two numbers lo,hi such as 0.1,0.9, not nan")
    if lo > hi:
        raise DiffrepError(f"{flag} {text!r}: lo must not exceed hi")
    return lo, hi


def cmd_sample(a: argparse.Namespace) -> int:
    from diffrep import distributed
    from diffrep.generate import sample_run

    check_outputs(a, "out", "grid")
    if abs(a.cfg) > CFG_SUSPICIOUS:
        warnings.warn(f"--cfg {a.cfg}: guidance scales above {CFG_SUSPICIOUS} saturate the images (1.5–4 is usual)",
                      stacklevel=1)
    done = sample_run(a.run, a.out, a.n, a.sampler, a.steps, a.grid_rho, a.seed, a.cfg, parse_interval(a.cfg_interval),
                      a.labels, a.batch_size, a.weights, a.precision, a.grid, a.device, not a.no_progress,
                      compile_net=a.compile, on_start=startup, guidance=a.guidance, like=a.like)
    if distributed.current().is_main:
        guided = "".join(f", {g}" for g in done["guidance"])
        print(f"{done['n']} samples ({done['sampler']}, {done['nfe']} net calls each, cfg {done['cfg']}{guided}) "
              f"from step "
              f"{done['checkpoint_step']} in {done['seconds']:.1f}s → {a.out}" + (f", grid {a.grid}" if a.grid else ""))
    return 0


def cmd_train_classifier(a: argparse.Namespace) -> int:
    from diffrep.guidance.train_classifier import train_classifier

    check_outputs(a, "out")
    card = train_classifier(a.run, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, channels=a.channels,
                            seed=a.seed, clean=a.clean, t_range=parse_interval(a.t_range, "--t-range"),
                            device=a.device, progress=not a.no_progress)
    accuracy = ", ".join(f"{v:.1%} at t={t}" for t, v in card["test_accuracy"].items())
    print(f"classifier for {a.run} ({card['steps']} steps, {card['seconds']:.0f}s) → {a.out}; test accuracy {accuracy}")
    return 0
