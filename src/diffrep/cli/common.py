"""What the commands share: argparse types, parent parsers for the options they repeat, start-up lines."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from diffrep.errors import DiffrepError

FORMATTER = argparse.RawDescriptionHelpFormatter
NET_PRECISION_HELP = "auto (default): bf16 autocast where the device computes bf16 natively, else fp32"
ENCODER_PRECISION_HELP = "auto (default): fp32, as the published numbers metric encoders are compared with; bf16 is faster"

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a diffusion model"),
    "train-vae": ("latent", "train an autoencoder whose latent space a diffusion model trains in (--space vae:)"),
    "quickstart": ("train", "measure the machine, train the preset (or the small plan), sample, judge"),
    "presets": ("train", "list the presets"),
    "plugins": ("train", "list the training plug-ins and their options"),
    "sample": ("sample", "draw samples from a trained run (ADM .npz layout)"),
    "distill": ("distill", "distil a run into a student: one forward per guided step, or half the sampler steps"),
    "train-classifier": ("sample", "train a noise-aware classifier of a run for classifier guidance (--guidance "
                         "classifier:)"),
    "restore": ("restore", "restore measured images with a run as the prior (RED-diff, DPS, ΠGDM, DDRM, DAPS)"),
    "translate": ("restore", "image-to-image translation by inversion (CycleDiffusion's DPM-Encoder)"),
    "eval": ("evaluate", "metrics × encoders between generated and reference images"),
    "judge": ("evaluate", "reference-encoder accuracy and FD_ref of samples of the embedded data"),
    "features": ("represent", "features of images: a diffusion run's at (block, t), or a metric encoder's"),
    "probe": ("represent", "linear and k-NN probes of a run's features at (block, t) and of other backbones"),
    "classify": ("represent", "zero-shot Diffusion Classifier accuracy of a class-conditional run"),
    "reference": ("reference", "train the reference encoder of a built-in dataset"),
}
"""Command → (the ``diffrep.cli`` module that registers it, its one-line help), in ``diffrep --help`` order.  Only
the named command's module is imported (and with it torch), so ``--help``, ``--version`` and a typo are fast."""


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (a count or a size)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number ≥ 0 (an interval where 0 means never)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (not nan, not inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a scale or an exponent)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def examples(*lines: str) -> str:
    """An ``--help`` epilog of example command lines."""
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


def parents(*, device: bool = True, progress: bool = True, seed: int | None = None, batch_size: int | None = None,
            batch_help: str = "images per forward pass", precision: str | None = None, encoder: bool = False,
            cache: bool = False, outputs: bool = False) -> list[argparse.ArgumentParser]:
    """Parent parsers for the options commands repeat: ``--device``, ``--no-progress``, ``--seed`` (with its
    default), ``--batch-size`` (with its default), ``--precision`` (``"net"`` or ``"encoder"`` help), the
    metric-encoder options (``--encoder-weights``, ``--resize``), the feature-cache options and ``--overwrite``
    (for commands that write output files: see :func:`check_outputs`)."""
    from diffrep.evaluation.encoders.resize import RESIZE_MODES
    from diffrep.precision import PRECISIONS

    made = []

    def parent() -> argparse.ArgumentParser:
        made.append(argparse.ArgumentParser(add_help=False))
        return made[-1]

    if seed is not None:
        parent().add_argument("--seed", type=int, default=seed, help=f"seed of every random draw (default {seed})")
    if batch_size is not None:
        parent().add_argument("--batch-size", type=positive_int, default=batch_size,
                              help=f"{batch_help} (default {batch_size})")
    if precision is not None:
        parent().add_argument("--precision", choices=PRECISIONS, default="auto",
                              help=NET_PRECISION_HELP if precision == "net" else ENCODER_PRECISION_HELP)
    if encoder:
        p = parent()
        p.add_argument("--encoder-weights", action="append", default=[], metavar="NAME=PATH",
                       help="local weights file for an encoder (repeatable); default: the official download")
        p.add_argument("--resize", choices=RESIZE_MODES, help="override the encoders' resize mode")
    if cache:
        p = parent()
        p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
        p.add_argument("--cache-dir", type=Path,
                       help="feature cache (default $DIFFREP_CACHE/features or ~/.cache/diffrep/features)")
    if outputs:
        parent().add_argument("--overwrite", action="store_true", help="replace output files that exist")
    if device:
        parent().add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 …")
    if progress:
        parent().add_argument("--no-progress", action="store_true", help="no progress bars")
    return made


def check_outputs(a: argparse.Namespace, *flags: str) -> None:
    """Check the output files named by ``flags`` (``"out"``, ``"grid"``, …) before any work: none may exist
    unless ``--overwrite``, and each must be writable."""
    from diffrep.io import check_output_path

    for flag in flags:
        path = getattr(a, flag)
        if path is not None:
            check_output_path(path, a.overwrite, "--" + flag.replace("_", "-"))


def startup(precision) -> None:
    """The start-up line: which precision was chosen, and why."""
    print(precision.describe(), file=sys.stderr)


def device_name(name: str) -> str:
    """``--device`` resolved (``auto``: this process's GPU, else the CPU)."""
    from diffrep.runtime import pick_device

    return str(pick_device(name))


def floats(text: str, flag: str) -> list[float]:
    """A comma-separated list of numbers, or a one-line error naming ``flag``."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise DiffrepError(f"{flag} {text!r}: expected comma-separated numbers such as 0.05,0.1,0.2") from None


def encoder_weights(pairs: list[str], encoders: list[str]) -> dict[str, str]:
    """``--encoder-weights NAME=PATH`` flags as ``{NAME: PATH}``; each NAME must be one of ``encoders`` (whose
    ``:LAYER`` suffixes are ignored: ``clip=PATH`` serves ``clip:projected``)."""
    out = {}
    from diffrep.evaluation.encoders import encoder_base

    bases = [encoder_base(e) for e in encoders]
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not path:
            raise DiffrepError(f"--encoder-weights {pair!r}: expected NAME=PATH, e.g. inception=pt_inception.pth")
        if name not in bases:
            raise DiffrepError(f"--encoder-weights {pair!r}: {name!r} is not among the encoders used here "
                               f"({', '.join(encoders)})")
        out[name] = path
    return out


def feature_cache(a):
    """The feature cache the ``--no-cache``/``--cache-dir`` options ask for."""
    from diffrep.evaluation.features import FeatureCache

    return None if a.no_cache else FeatureCache(a.cache_dir)


def encoder_precision(a) -> str:
    """``--precision`` resolved for a metric encoder (start-up line on rank 0)."""
    from diffrep import distributed
    from diffrep.precision import resolve_precision

    chosen = resolve_precision(a.precision, device_name(a.device), encoder=True)
    if distributed.current().is_main:
        startup(chosen)
    return chosen.name


def write_json(path: Path, payload: dict) -> None:
    """``payload`` as indented JSON with its ``provenance`` (versions, command line, time), written atomically."""
    import json

    from diffrep.io import atomic_write, provenance

    with atomic_write(path, "w") as f:
        json.dump({**payload, "provenance": payload.get("provenance", provenance())}, f, indent=1)
