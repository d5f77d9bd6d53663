"""The plug-in contract: how a training-time method attaches to the one training loop.

A plug-in may declare taps (hidden states of the student it needs), transform the
batch, own trainable heads (optimised with the net, checkpointed with the run,
never part of the exported sampling model), add named loss terms whose weight
follows a schedule over steps, initialise weights before training, read the EMA
model, and keep checkpointed state.  The trainer calls the hooks below in this
order each step: ``transform_batch`` → base loss (with ``taps``) → ``loss_terms``.

Plug-ins are named and configured on the command line (``--plugin repa:depth=2,weight=0.5``)
or in a config file (``plugins: ["repa:depth=2"]``); :data:`PLUGINS` maps each name to its
class and options dataclass (defaults from its paper, scaled to the embedded data where the
paper's value does not apply, as each docstring says).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.loss import Batch, LossOutput


class Plugin(nn.Module):
    """Base class; every hook defaults to "do nothing"."""

    name = "plugin"
    taps: tuple[str, ...] = ()

    def setup(self, net: nn.Module, ema: nn.Module, process, image_shape: tuple[int, int, int]) -> None:
        """Called once before training (and before a resume loads state): build heads, initialise weights."""

    def transform_batch(self, batch: Batch, step: int, generator: torch.Generator) -> Batch:
        return batch

    def loss_terms(self, batch: Batch, output: LossOutput, step: int, ema: nn.Module) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms added to the total (logged as ``<name>/<term>``)."""
        return {}

    def extra_state(self) -> dict:
        """Checkpointed state beyond the heads' parameters (which are saved automatically)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""


# ---------------------------------------------------------------- weight schedules

def schedule_factor(spec: str, step: int) -> float:
    """Multiplier of a loss weight at ``step``: ``constant``; ``linear:S`` (1 → 0 at step S);
    ``exp:H`` (halves every H steps, ERW's ``2^(−step/H)``); ``step:S`` (1 before S, 0 from S)."""
    kind, _, arg = spec.partition(":")
    if kind == "constant" and not arg:
        return 1.0
    try:
        value = float(arg)
    except ValueError:
        value = -1.0
    if value <= 0 or kind not in ("linear", "exp", "step"):
        raise DiffrepError(f"schedule {spec!r}: use constant, linear:STEPS, exp:HALF_LIFE or step:STEPS")
    if kind == "linear":
        return max(0.0, 1.0 - step / value)
    if kind == "exp":
        return 2.0 ** (-step / value)
    return 1.0 if step < value else 0.0


# ---------------------------------------------------------------- helpers

def as_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """A tapped hidden state as tokens ``N×L×D``: DiT tokens as they are, a U-Net map ``N×C×H×W`` as ``N×HW×C``."""
    return hidden.flatten(2).transpose(1, 2) if hidden.ndim == 4 else hidden


def match_token_grid(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a square token grid ``N×L×D`` to ``length`` tokens (bilinear on the grid)."""
    if tokens.shape[1] == length:
        return tokens
    side, target = math.isqrt(tokens.shape[1]), math.isqrt(length)
    if side * side != tokens.shape[1] or target * target != length:
        raise DiffrepError(f"cannot match a {tokens.shape[1]}-token grid to {length} tokens: both must be square "
                           "grids (choose another block or encoder)")
    grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    grid = F.interpolate(grid, size=(target, target), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def _hidden_shape(net: nn.Module, image_shape: tuple[int, int, int], tap: str) -> torch.Size:
    """Shape of one image's tapped hidden state (a dry forward of one blank image)."""
    if tap not in net.tap_names:
        raise DiffrepError(f"unknown block {tap!r}: this net has {', '.join(net.tap_names)}")
    device = next(net.parameters()).device
    cond = torch.zeros(1, dtype=torch.long, device=device) if getattr(net, "num_classes", 0) else None
    with torch.no_grad():
        _, hidden = net(torch.zeros(1, *image_shape, device=device), torch.zeros(1, device=device), cond, taps=(tap,))
    return hidden[tap].shape[1:]


def _token_dim(shape: torch.Size) -> int:
    return shape[0] if len(shape) == 3 else shape[-1]


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- REPA

@dataclass
class RepaOptions:
    encoder: str = "reference"      # any registry encoder with a token grid (dinov2-b14 in the paper)
    encoder_weights: str = ""       # local weights file for the encoder ("" = its default)
    depth: int = 2                  # align the student's block<depth> (SiT-XL/2: 8 of 28)
    weight: float = 0.5             # λ
    proj_dim: int = 512             # projector width (paper: 2048, for D = 1152)
    schedule: str = "constant"


class REPA(Plugin):
    """REPA — representation alignment (Yu et al., arXiv 2410.06940).

    The student's tokens after block ``depth`` go through a projector MLP
    (Linear–SiLU–Linear–SiLU–Linear) and are pulled towards the patch tokens of a frozen encoder
    applied to the *clean* image, token by token: loss ``λ·(−mean cos)``, averaged once over
    tokens and batch (the reference code's double batch-mean is not repeated).  Grids of different
    size are matched by bilinear interpolation of the encoder's grid.  The encoder runs in
    inference mode, preprocessing the images exactly as its spec declares; it is not a head and is
    not checkpointed.
    """

    name = "repa"

    def __init__(self, options: RepaOptions):
        super().__init__()
        from diffrep.encoders import get_encoder

        self.options = options
        self.taps = (f"block{options.depth}",)
        encoder = get_encoder(options.encoder, options.encoder_weights or None)
        if not encoder.has_tokens:
            raise DiffrepError(f"repa: the {options.encoder} encoder has no token grid; use reference or dinov2-*")
        self._frozen = [encoder]          # a plain list: not a sub-module, so not optimised or checkpointed

    def setup(self, net, ema, process, image_shape) -> None:
        student_dim = _token_dim(_hidden_shape(net, image_shape, self.taps[0]))
        probe = torch.zeros(1, *image_shape, dtype=torch.uint8)
        target_dim = self._frozen[0].tokens(probe).shape[-1]
        self.projector = _mlp([student_dim, self.options.proj_dim, self.options.proj_dim, target_dim])

    def loss_terms(self, batch, output, step, ema):
        from diffrep.data import to_uint8

        encoder = self._frozen[0].to(batch.x0.device)
        student = as_tokens(output.taps[self.taps[0]]).float()
        target = encoder.tokens(to_uint8(batch.x0))
        target = match_token_grid(target, student.shape[1])
        cos = F.cosine_similarity(self.projector(student), target, dim=-1).mean()
        return {"align": self.options.weight * schedule_factor(self.options.schedule, step) * -cos}


# ---------------------------------------------------------------- SRA

@dataclass
class SraOptions:
    student_block: int = 2          # SiT-XL: 8
    teacher_block: int = 4          # of the EMA net (SiT-XL: 20, DiT-XL: 16)
    weight: float = 0.5
    time_gap: float = 0.2           # teacher time t' = t − time_gap·t_max·U(0, 1), clipped at 0
    schedule: str = "constant"


class SRA(Plugin):
    """SRA — self-representation alignment (Jiang et al., arXiv 2505.02831).

    No external encoder: the teacher is the EMA model at a *less noisy* time
    ``t' = max(0, t − time_gap·t_max·u)``, ``u ~ U(0, 1)`` (drawn per sample from the step's
    plug-in generator), with the same noise and labels and no gradient.  The student's tokens after
    ``student_block`` pass through a head Linear(D→2D)–SiLU–Linear(2D→D_teacher) and are pulled to
    the teacher's tokens after ``teacher_block``: loss ``weight·(1 − mean cos)`` (the paper moved
    from smooth-L1 to cosine because the former grew with the feature norms).
    """

    name = "sra"

    def __init__(self, options: SraOptions):
        super().__init__()
        self.options = options
        self.taps = (f"block{options.student_block}",)
        self.teacher_tap = f"block{options.teacher_block}"
        self._u: torch.Tensor | None = None

    def setup(self, net, ema, process, image_shape) -> None:
        self.process = process
        d_student = _token_dim(_hidden_shape(net, image_shape, self.taps[0]))
        d_teacher = _token_dim(_hidden_shape(ema, image_shape, self.teacher_tap))
        self.head = _mlp([d_student, 2 * d_student, d_teacher])

    def transform_batch(self, batch, step, generator):
        self._u = torch.rand(batch.t.shape[0], generator=generator).to(batch.t.device)
        return batch

    def loss_terms(self, batch, output, step, ema):
        t_teacher = (batch.t - self.options.time_gap * self.process.t_max * self._u).clamp_min(0)
        with torch.no_grad():
            x_teacher = self.process.corrupt(batch.x0, t_teacher, batch.noise)
            _, hidden = self.process.denoiser(ema, autocast=True).raw(x_teacher, t_teacher, batch.cond,
                                                                      (self.teacher_tap,))
        student = self.head(as_tokens(output.taps[self.taps[0]]).float())
        teacher = match_token_grid(as_tokens(hidden[self.teacher_tap]).float(), student.shape[1])
        cos = F.cosine_similarity(student, teacher, dim=-1).mean()
        return {"align": self.options.weight * schedule_factor(self.options.schedule, step) * (1 - cos)}


# ---------------------------------------------------------------- CEP

@dataclass
class CepOptions:
    gamma: float = 1.0              # δ's scale is γ/√d
    noise: str = "uniform"          # uniform: δ ~ U(−γ/√d, γ/√d); gaussian: δ ~ N(0, (γ/√d)²)
    schedule: str = "constant"


class CEP(Plugin):
    """CEP — condition embedding perturbation, "slight corruption" (Ning et al., arXiv 2405.20494).

    During the student's training forward passes a small random δ is added to the class
    embedding (a forward hook on the net's label embedding; the EMA net, sampling and
    evaluation never see it).  δ is drawn from the step's plug-in generator, so a resume stays
    exact.  It adds no loss term.
    """

    name = "cep"

    def __init__(self, options: CepOptions):
        super().__init__()
        if options.noise not in ("uniform", "gaussian"):
            raise DiffrepError(f"cep: noise={options.noise!r}: choose uniform or gaussian")
        self.options = options
        self._generator: torch.Generator | None = None
        self._step = 0

    def setup(self, net, ema, process, image_shape) -> None:
        if getattr(net, "y_embedder", None) is None:
            raise DiffrepError("cep perturbs the class embedding: it needs a class-conditional model")
        net.y_embedder.register_forward_hook(self._perturb)

    def transform_batch(self, batch, step, generator):
        self._generator, self._step = generator, step
        return batch

    def _perturb(self, module: nn.Module, inputs, embedding: torch.Tensor) -> torch.Tensor:
        if not module.training or self._generator is None:
            return embedding
        scale = self.options.gamma / math.sqrt(embedding.shape[-1]) * schedule_factor(self.options.schedule,
                                                                                        self._step)
        if self.options.noise == "uniform":
            delta = 2 * torch.rand(embedding.shape, generator=self._generator) - 1
        else:
            delta = torch.randn(embedding.shape, generator=self._generator)
        self._generator = None                     # one draw per micro-batch
        return embedding + scale * delta.to(embedding)


# ---------------------------------------------------------------- registry

PLUGINS: dict[str, tuple[type[Plugin], type]] = {"repa": (REPA, RepaOptions), "sra": (SRA, SraOptions),
                                                 "cep": (CEP, CepOptions)}


def parse_plugin(spec: str) -> tuple[str, object]:
    """``"repa:encoder=reference,depth=2"`` → ``("repa", RepaOptions(...))``, with clear errors."""
    name, _, rest = spec.partition(":")
    if name not in PLUGINS:
        raise DiffrepError(f"unknown plug-in {name!r}: choose from {', '.join(PLUGINS)} (see `diffrep plugins`)")
    options_cls = PLUGINS[name][1]
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    values = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if key not in fields or not sep:
            raise DiffrepError(f"{name}: unknown option {item!r}; options: "
                               + ", ".join(f"{k}={f.default}" for k, f in fields.items()))
        kind = type(fields[key].default)
        try:
            values[key] = kind(value)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise DiffrepError(f"{name}: option {key}={value} must be {what}") from None
    options = options_cls(**values)
    if hasattr(options, "schedule"):
        schedule_factor(options.schedule, 0)
    return name, options


def build_plugins(specs: list[str]) -> list[Plugin]:
    """Plug-ins from their specs, in order; a name may appear once."""
    parsed = [parse_plugin(s) for s in specs]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise DiffrepError(f"a plug-in is given twice: {', '.join(specs)}")
    return [PLUGINS[name][0](options) for name, options in parsed]


def describe_plugins() -> str:
    """One paragraph per plug-in: its paper line and its options with defaults."""
    lines = []
    for name, (cls, options_cls) in PLUGINS.items():
        lines.append(f"{name}: {cls.__doc__.strip().splitlines()[0]}")
        lines += [f"    {f.name}={f.default!r}" for f in dataclasses.fields(options_cls)]
    return "\n".join(lines)
