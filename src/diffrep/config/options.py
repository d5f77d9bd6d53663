"""The training configuration: one dataclass whose fields carry their section, help and valid values.

The command line's ``train`` flags are generated from this metadata (:mod:`diffrep.cli.train`), so a
new option is one field here.  Sections group the fields in ``config.yaml``; :data:`RESUMABLE_FIELDS`
may change on ``--resume``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

from diffrep.errors import DiffrepError
from diffrep.precision import PRECISIONS, check_precision

ADAMW_IMPLS = ("fused", "foreach", "for-loop")
SECTIONS = ("data", "space", "model", "process", "objective", "optim", "log")
"""Sections of ``config.yaml``, in order."""


def option(default, section: str, help: str, *, choices: tuple | Callable[[], tuple] | None = None,
           minimum: int | None = None, flag: str | None = None, action: str | None = None, metavar: str | None = None,
           factory: Callable | None = None):
    """A config field with the metadata its command-line flag is generated from: ``section``, ``help``,
    ``choices`` (or a function returning them, for registries), ``minimum`` (whole numbers), ``flag`` and
    ``action`` where they differ from ``--name`` and the type's default action."""
    meta = {"section": section, "help": help, "choices": choices, "minimum": minimum, "flag": flag, "action": action,
            "metavar": metavar}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def _models() -> tuple:
    from diffrep.nets import MODELS

    return tuple(MODELS)


def _processes() -> tuple:
    from diffrep.processes import PROCESSES

    return tuple(PROCESSES)


def _samplers() -> tuple:
    from diffrep.samplers import SAMPLERS

    return tuple(SAMPLERS)


@dataclass
class TrainConfig:
    data: str = option("mnist5k", "data", "mnist5k | digits | a folder of images | an .npz")
    image_size: int | None = option(None, "data", "resize images to this square size (needed for mixed sizes)",
                                    minimum=1)
    hflip: bool = option(False, "data", "random horizontal flips")
    class_conditional: bool = option(True, "data", "ignore labels even when the data has them",
                                     flag="--unconditional", action="store_false")
    label_dropout: float = option(0.1, "data", "fraction of labels replaced by the null class (CFG)")
    condition: str = option("labels", "data", "labels (the data's own); clusters:k=K,source=pixels|ENCODER|run:PATH: "
                            "k-means self-labels for data without annotations (self-guided diffusion, arXiv "
                            "2210.06462); embedding:source=…: each image's embedding (representation-conditioned "
                            "generation)",
                            metavar="labels|clusters:k=K,…|embedding:source=…")
    space: str = option("pixels", "space", "where the net works: pixels, or vae:PATH (a VAE run of `diffrep train-vae`, "
                        "a diffusers AutoencoderKL folder, or a hub name such as stabilityai/sd-vae-ft-ema)",
                        metavar="pixels|vae:PATH")
    latent_norm: str = option("channel", "space", "latent space only: channel (per-channel mean/std measured on the "
                              "data) or a fixed scale such as 0.18215 (SD-VAE)")
    latent_cache: bool = option(True, "space", "latent space only: draw each step's latents from cached posterior "
                                "moments (--no-latent-cache encodes every batch on the fly; same draws)",
                                action="negatable")
    diffusevae: str = option("", "space", "DiffuseVAE (arXiv 2201.00308): condition the net on this VAE's "
                             "reconstruction of each image (a VAE run or folder, as --space vae:); sampling refines VAE samples",
                             metavar="VAE")
    model: str = option("UNet-S", "model", "the net's registered size", choices=_models, metavar="MODEL")
    grad_checkpoint: bool = option(False, "model", "activation checkpointing per block: less memory, ~30%% more compute")
    channels_last: bool = option(False, "model", "U-Net in NHWC memory layout (not with --compile on the CPU)")
    compile: bool = option(False, "model", "torch.compile the net (first steps compile; falls back to eager with a "
                           "warning if it fails)", action="negatable")
    deterministic: bool = option(False, "model", "deterministic kernels, so a resumed or repeated GPU run, or compiled "
                                 "CPU run, is bit-identical too (slower; eager CPU runs always are)")
    fsdp: bool = option(False, "model", "under torchrun: shard weights, gradients, optimizer and EMA over the "
                        "processes (FSDP2) instead of replicating them (DDP); for nets that do not fit one device")
    process: str = option("flow", "process", "flow (SiT), vp (DDPM) or edm", choices=_processes)
    prediction: str = option("eps", "process", "vp only: ε- or v-prediction", choices=("eps", "v"))
    schedule: str = option("linear", "process", "vp only: β schedule", choices=("linear", "cosine"))
    time_sampling: str = option("uniform", "process", "flow only: training-time distribution",
                                choices=("uniform", "logit-normal"))
    distill: str = option("", "objective", "learn from a teacher run instead of denoising (written by `diffrep "
                          "distill`): guidance:teacher=RUN,step=N,max_scale=S | progressive:teacher=RUN,step=N,"
                          "sampling_steps=K", metavar="KIND:teacher=RUN,…")
    steps: int = option(2000, "optim", "total optimiser steps (raise it with --resume to extend a run)", minimum=1)
    batch_size: int = option(128, "optim", "global batch size", minimum=1)
    grad_accum: int = option(1, "optim", "micro-batches per step (same update as the full batch)", minimum=1)
    lr: float = option(1e-3, "optim", "peak learning rate (warm-up, then constant: DiT/SiT/REPA)")
    warmup: int = option(100, "optim", "warm-up steps", minimum=0)
    weight_decay: float = option(0.0, "optim", "AdamW weight decay")
    beta2: float = option(0.999, "optim", "AdamW β2")
    adamw_impl: str = option("foreach", "optim", "AdamW kernel (fused was no faster on the CPU here)",
                             choices=ADAMW_IMPLS)
    grad_clip: float = option(1.0, "optim", "max gradient norm (0: off)")
    ema_decay: float = option(0.999, "optim", "EMA decay (ramped up from the start, see ema_decay_at)")
    ema_start: int = option(0, "optim", "EMA copies the weights before this step", minimum=0)
    precision: str = option("auto", "optim", "auto: bf16 autocast where the device computes bf16 natively (CUDA, AMX "
                            "or AVX512_BF16 CPUs), else fp32; a run records the choice and a resume keeps it",
                            choices=PRECISIONS)
    seed: int = option(0, "optim", "the seed every draw of the run derives from")
    plugins: list[str] = option(None, "optim", "a training plug-in, repeatable: repa:encoder=reference,depth=2,"
                                "weight=0.5 | sra (see `diffrep plugins`)", flag="--plugin", action="append",
                                metavar="NAME[:OPT=VAL,…]", factory=list)
    ckpt_every: int = option(500, "log", "checkpoint every N steps (and at the end, and on Ctrl-C)", minimum=0)
    keep_last: int = option(3, "log", "checkpoints to keep (0: all)", minimum=0)
    log_every: int = option(25, "log", "log the loss every N steps", minimum=0)
    grid_every: int = option(500, "log", "sample-grid PNG every N steps (0: never)", minimum=0)
    grid_sampler: str = option("euler", "log", "sampler of the grids and evaluations", choices=_samplers)
    grid_steps: int = option(32, "log", "sampler steps of the grids and evaluations", minimum=1)
    eval_every: int = option(0, "log", "evaluate EMA samples every N steps (0: never): eval.jsonl, TensorBoard "
                             "eval/*, eval.png", minimum=0)
    eval_samples: int = option(1000, "log", "samples per evaluation (class-balanced)", minimum=1)
    eval_metrics: str = option("fd", "log", "comma list of metrics (see `diffrep eval --help`)")
    eval_encoders: str = option("reference", "log", "comma list of encoders")

    def validate(self) -> "TrainConfig":
        from diffrep.nets import MODELS
        from diffrep.processes import PROCESSES

        if self.model not in MODELS:
            raise DiffrepError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.process not in PROCESSES:
            raise DiffrepError(f"unknown process {self.process!r}: choose one of {', '.join(PROCESSES)}")
        if self.adamw_impl not in ADAMW_IMPLS:
            raise DiffrepError(f"unknown --adamw-impl {self.adamw_impl!r}: choose one of {', '.join(ADAMW_IMPLS)}")
        check_precision(self.precision)
        from diffrep.data.spaces import check_space_spec
        from diffrep.latent.space import parse_norm

        check_space_spec(self.space)
        parse_norm(self.latent_norm)
        from diffrep.represent.clusters import parse_condition

        parse_condition(self.condition)
        from diffrep.distill.spec import parse_distill

        parse_distill(self.distill)
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise DiffrepError("--steps, --batch-size and --grad-accum must be positive")
        if self.batch_size % self.grad_accum:
            raise DiffrepError(f"--batch-size {self.batch_size} is not divisible by --grad-accum {self.grad_accum}")
        for name, (ok, domain) in FLOAT_DOMAINS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and ok(value)):
                raise DiffrepError(f"--{name.replace('_', '-')} must be {domain}, got {value}")
        if self.eval_every or (self.eval_metrics, self.eval_encoders) != ("fd", "reference"):
            self._validate_eval_names()
        if self.eval_every and self.eval_samples < 10:
            raise DiffrepError(f"--eval-samples must be at least 10, got {self.eval_samples}")
        from diffrep.plugins import parse_plugin

        for spec in self.plugins:
            parse_plugin(spec)
        return self

    def refuse_ignored_options(self) -> None:
        """Refuse options that a new run would silently ignore.  Not part of :meth:`validate`, so that runs
        saved before this check (with such an option recorded) still load and resume."""
        from diffrep.data import BUILTIN

        if self.process != "vp" and (self.prediction != "eps" or self.schedule != "linear"):
            raise DiffrepError(f"--prediction and --schedule apply to --process vp only (this run: {self.process})")
        if self.process != "flow" and self.time_sampling != "uniform":
            raise DiffrepError(f"--time-sampling applies to --process flow only (this run: {self.process})")
        if self.eval_every and "reference" in self.eval_encoders.split(",") and self.data not in BUILTIN:
            raise DiffrepError(f"--eval-encoders reference: the reference encoders are trained on {', '.join(BUILTIN)}, "
                               f"not {self.data}; pass --eval-encoders inception (or pixels, dinov2-s14, clip)")
        if self.space == "pixels" and (self.latent_norm, self.latent_cache) != ("channel", True):
            raise DiffrepError("--latent-norm and --no-latent-cache apply to a latent space only (--space vae:PATH)")
        if self.condition != "labels" and not self.class_conditional:
            raise DiffrepError(f"--condition {self.condition.partition(':')[0]} gives the net self-labels or embeddings "
                               "to condition on: drop --unconditional")
        if self.diffusevae and self.space != "pixels":
            raise DiffrepError("--diffusevae conditions a pixel-space net on a VAE's reconstructions: drop --space (or "
                               "--diffusevae)")
        if self.image_size is not None and (self.data in BUILTIN or self.data.endswith(".npz")):
            raise DiffrepError(f"--image-size resizes the images of a folder; {self.data} has a fixed size: "
                               "drop --image-size")

    def suspicious(self, dataset_size: int, labels_used: int, num_classes: int) -> list[str]:
        """Legal values a new run warns about: the run would train, but probably not as meant."""
        found = []
        if self.warmup >= self.steps:
            found.append(f"--warmup {self.warmup} ≥ --steps {self.steps}: the learning rate never reaches --lr {self.lr}")
        if self.batch_size > dataset_size:
            found.append(f"--batch-size {self.batch_size} > the {dataset_size} training images: every batch repeats "
                         "images (epochs are sampled without replacement, batches span epochs)")
        if num_classes > 2 * labels_used:
            found.append(f"the labels use {labels_used} distinct values but reach {num_classes - 1}: the net gets "
                         f"{num_classes} class embeddings, most never trained (renumber the labels 0…{labels_used - 1})")
        return found

    def _validate_eval_names(self) -> None:
        from diffrep.evaluation.encoders import ENCODERS, encoder_base
        from diffrep.evaluation import METRICS

        for flag, names, valid, base in (("--eval-metrics", self.eval_metrics, METRICS, str),
                                         ("--eval-encoders", self.eval_encoders, tuple(ENCODERS), encoder_base)):
            unknown = [n for n in names.split(",") if base(n) not in valid]
            if unknown:
                raise DiffrepError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")

    def identity(self) -> dict:
        """The fields that define the training trajectory (everything a resume must keep)."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_FIELDS}


FLOAT_DOMAINS: dict[str, tuple[Callable[[float], bool], str]] = {
    "label_dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "lr": (lambda v: v > 0, "a positive number"),
    "weight_decay": (lambda v: v >= 0, "a non-negative number"),
    "beta2": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "grad_clip": (lambda v: v >= 0, "a non-negative number (0: off)"),
    "ema_decay": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
}
"""The float options' valid values (each must also be finite), checked by :meth:`TrainConfig.validate`."""


RESUMABLE_FIELDS = frozenset({"steps", "ckpt_every", "keep_last", "log_every", "grid_every", "grid_sampler", "grid_steps",
                              "eval_every", "eval_samples", "eval_metrics", "eval_encoders",
                              # speed options: a resume may switch them (bit-identity needs the same ones)
                              "grad_checkpoint", "channels_last", "compile", "adamw_impl", "deterministic", "fsdp",
                              "grad_accum", "precision", "latent_cache"})
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}
FIELD_SECTIONS = {f.name: f.metadata["section"] for f in fields(TrainConfig)}
