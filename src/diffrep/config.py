"""Training configuration and named presets.

A config is a flat dataclass: defaults ← preset ← YAML file (``--config``) ← command-line
flags, in that order.  The resolved config is written to the run directory and a
``--resume`` checks it against the checkpoint's (only the fields in
:data:`RESUMABLE_FIELDS` may change).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from diffrep.errors import DiffrepError
from diffrep.precision import check_precision


ADAMW_IMPLS = ("fused", "foreach", "for-loop")


@dataclass
class TrainConfig:
    # data
    data: str = "mnist5k"
    image_size: int | None = None
    hflip: bool = False
    class_conditional: bool = True
    label_dropout: float = 0.1
    # model and process
    model: str = "UNet-S"
    process: str = "flow"
    prediction: str = "eps"
    schedule: str = "linear"
    time_sampling: str = "uniform"
    grad_checkpoint: bool = False       # activation checkpointing per block (DiT and U-Net)
    channels_last: bool = False         # U-Net weights and activations in NHWC
    compile: bool = False               # torch.compile the net (falls back to eager if compiling fails)
    deterministic: bool = False         # deterministic kernels: bit-identical GPU and compiled CPU runs (slower)
    fsdp: bool = False                  # under torchrun: shard weights, gradients, optimizer and EMA (FSDP2)
    # optimisation (DiT/SiT/REPA recipe: AdamW, constant lr after warm-up, no weight decay)
    steps: int = 2000
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    beta2: float = 0.999
    adamw_impl: str = "foreach"         # foreach | fused | for-loop (fused was no faster on CPU here)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_start: int = 0
    precision: str = "auto"             # auto | bf16 | fp32; a run records what auto chose (diffrep.precision)
    seed: int = 0
    # bookkeeping (may change on --resume)
    ckpt_every: int = 500
    keep_last: int = 3
    log_every: int = 25
    grid_every: int = 500
    grid_sampler: str = "euler"
    grid_steps: int = 32
    eval_every: int = 0                 # 0: never; samples use grid_sampler/grid_steps
    eval_samples: int = 1000
    eval_metrics: str = "fd"
    eval_encoders: str = "reference"
    plugins: list[str] = field(default_factory=list)

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
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise DiffrepError("--steps, --batch-size and --grad-accum must be positive")
        if self.batch_size % self.grad_accum:
            raise DiffrepError(f"--batch-size {self.batch_size} is not divisible by --grad-accum {self.grad_accum}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise DiffrepError(f"--label-dropout must be in [0, 1), got {self.label_dropout}")
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
        if self.image_size is not None and (self.data in BUILTIN or self.data.endswith(".npz")):
            raise DiffrepError(f"--image-size resizes the images of a folder; {self.data} has a fixed size: "
                               "drop --image-size")

    def _validate_eval_names(self) -> None:
        from diffrep.encoders import ENCODERS
        from diffrep.evaluate import METRICS

        for flag, names, valid in (("--eval-metrics", self.eval_metrics, METRICS),
                                   ("--eval-encoders", self.eval_encoders, tuple(ENCODERS))):
            unknown = [n for n in names.split(",") if n not in valid]
            if unknown:
                raise DiffrepError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")

    def identity(self) -> dict:
        """The fields that define the training trajectory (everything a resume must keep)."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_FIELDS}


RESUMABLE_FIELDS = frozenset({"steps", "ckpt_every", "keep_last", "log_every", "grid_every", "grid_sampler", "grid_steps",
                              "eval_every", "eval_samples", "eval_metrics", "eval_encoders",
                              # speed options: a resume may switch them (bit-identity needs the same ones)
                              "grad_checkpoint", "channels_last", "compile", "adamw_impl", "deterministic", "fsdp",
                              "grad_accum", "precision"})
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}

PRESETS: dict[str, tuple[str, dict]] = {
    "quickstart": (
        "UNet-S (1.1M params), flow matching, class-conditional mnist5k; the README's main job (7.5–10 min on 2 CPU cores)",
        {"model": "UNet-S", "process": "flow", "steps": 800, "batch_size": 128, "lr": 2e-3, "warmup": 100,
         "ema_decay": 0.999, "ckpt_every": 250, "grid_every": 500},
    ),
    "dit-tiny": (
        "DiT-T/4 (4.2M params), flow matching, class-conditional mnist5k; the DiT baseline for plug-ins "
        "(28 min with --compile)",
        {"model": "DiT-T/4", "process": "flow", "steps": 5200, "batch_size": 128, "lr": 2e-3, "warmup": 200,
         "ema_decay": 0.9995, "ckpt_every": 500, "grid_every": 500},
    ),
    "dit-s4": (
        "DiT-S/4 (32M params, DiT's S size), flow matching, mnist5k; for throughput, too slow to train well on a CPU",
        {"model": "DiT-S/4", "process": "flow", "steps": 20000, "batch_size": 128, "lr": 1e-4, "warmup": 0,
         "ema_decay": 0.9999},
    ),
    "smoke": (
        "UNet-S for 20 steps on sklearn's 8×8 digits: checks an installation in seconds",
        {"data": "digits", "model": "UNet-S", "steps": 20, "batch_size": 16, "ckpt_every": 10, "grid_every": 0,
         "log_every": 5},
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise DiffrepError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (see `diffrep presets`)")
    return dict(PRESETS[name][1])


def read_yaml_config(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DiffrepError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DiffrepError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise DiffrepError(f"config file {path} must hold a mapping of option: value")
    return values


def make_config(*layers: dict) -> TrainConfig:
    """Merge dicts of options (later wins) into a validated :class:`TrainConfig`."""
    merged: dict = {}
    for layer in layers:
        merged.update({k.replace("-", "_"): v for k, v in layer.items() if v is not None})
    unknown = sorted(set(merged) - set(FIELD_NAMES))
    if unknown:
        raise DiffrepError(f"unknown config option(s) {unknown}: valid options are {', '.join(FIELD_NAMES)}")
    return dataclasses.replace(TrainConfig(), **{k: _typed(k, v) for k, v in merged.items()}).validate()


def _typed(name: str, value: object) -> object:
    """``value`` as the type of option ``name`` (YAML reads ``1e-3`` as a string, ``8.5`` as a float)."""
    kind = FIELD_TYPES[name]
    if value is None and kind.endswith("| None"):
        return None
    base = kind.split(" |")[0]
    if base == "bool" and (isinstance(value, bool) or value in (0, 1)):
        return bool(value)
    if base == "int" and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    if base == "float" and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if base == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if base == "list[str]" and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    expected = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a string",
                "list[str]": "a list of strings, e.g. [\"repa:depth=2\"]"}[base]
    raise DiffrepError(f"config option {name}: expected {expected}, got {value!r}")


def config_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two ``identity()`` dicts."""
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def save_config(cfg: TrainConfig, path: Path) -> None:
    from diffrep.io import atomic_write

    with atomic_write(path, "w") as f:
        yaml.safe_dump(asdict(cfg), f, sort_keys=False)


def load_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DiffrepError(f"{run_dir} is not a diffrep run (no config.yaml): pass the --out folder of `diffrep train`")
    return make_config(read_yaml_config(path))
