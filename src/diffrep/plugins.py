"""The plug-in contract: how a training-time method attaches to the one training loop.

A plug-in may declare taps (hidden states of the student it needs), transform the
batch, own trainable heads (optimised with the net, checkpointed with the run,
never part of the exported sampling model), add named loss terms whose weight
follows a schedule over steps, initialise weights before training, read the EMA
model, hook into the student's forward pass, ask for an architecture option of the
net (:meth:`Plugin.net_options`), and keep checkpointed state.  The trainer calls
``setup`` once, ``initialize`` once on a fresh run, then each step
``transform_batch`` → base loss (with ``taps``) → ``loss_terms``.

Plug-ins are named and configured on the command line (``--plugin repa:depth=2,weight=0.5``)
or in a config file (``plugins: ["repa:depth=2"]``); :data:`PLUGINS` maps each name to its
class and options dataclass (defaults from its paper, scaled to the embedded data where the
paper's value does not apply, as each docstring says).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.loss import Batch, LossOutput
from diffrep.rng import BatchDraws


@dataclass
class WarmStart:
    """What :meth:`Plugin.initialize` may use: ``batch(k)``, the ``k``-th warm-up batch (the global
    batch, on the device, with its own random draws); the run's optimiser for given parameters;
    bf16 autocast on or off; whether to show progress."""

    batch: Callable[[int], Batch]
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    autocast: bool
    progress: bool = False


class Plugin(nn.Module):
    """Base class; every hook defaults to "do nothing"."""

    name = "plugin"
    taps: tuple[str, ...] = ()

    @classmethod
    def net_options(cls, options) -> dict:
        """Constructor options of the net this plug-in needs (part of the sampling model, e.g. selfcond)."""
        return {}

    def setup(self, net: nn.Module, ema: nn.Module, process, image_shape: tuple[int, int, int]) -> None:
        """Called once before training (and before a resume loads state): build heads, register hooks."""

    def check_taps(self, taps: set[str]) -> None:
        """Called after every plug-in's ``setup`` with the taps of the others: raise a
        :class:`DiffrepError` if one cannot work beside this plug-in."""

    def initialize(self, net: nn.Module, warm: WarmStart) -> bool:
        """Called once at the start of a fresh run (not on resume); may change ``net``'s weights in place
        (ERW's warm-up).  Returns whether it did; the EMA then starts from the new weights."""
        return False

    def transform_batch(self, batch: Batch, step: int, draws: BatchDraws) -> Batch:
        """Change a micro-batch before the forward pass.  Random draws come from ``draws``: made for
        the step's global batch and sliced to this micro-batch's rows, so a run does not depend
        on the number of processes or micro-batches."""
        return batch

    def loss_terms(self, batch: Batch, output: LossOutput, step: int, ema: nn.Module) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms added to the total (logged as ``<name>/<term>``).

        Runs under the run's bf16 autocast (as the net does): heads and frozen encoders compute
        in bf16; a term should be reduced in float32."""
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
        self.process = process
        student_dim = _token_dim(_hidden_shape(net, image_shape, self.taps[0]))
        probe = torch.zeros(1, *image_shape, dtype=torch.uint8)
        target_dim = self._frozen[0].tokens(probe).shape[-1]
        self.projector = _mlp([student_dim, self.options.proj_dim, self.options.proj_dim, target_dim])

    def alignment(self, projector: nn.Module, hidden: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Mean token-wise cosine between ``projector(hidden)`` and the encoder's tokens of the clean ``x0``."""
        from diffrep.data import to_uint8

        encoder = self._frozen[0].to(x0.device)
        student = as_tokens(hidden).float()
        target = match_token_grid(encoder.tokens(to_uint8(x0)), student.shape[1])
        return F.cosine_similarity(projector(student).float(), target, dim=-1).mean()

    def loss_terms(self, batch, output, step, ema):
        cos = self.alignment(self.projector, output.taps[self.taps[0]], batch.x0)
        return {"align": self.options.weight * schedule_factor(self.options.schedule, step) * -cos}


# ---------------------------------------------------------------- ERW

@dataclass
class ErwOptions:
    encoder: str = "reference"      # as repa
    encoder_weights: str = ""
    depth: int = 2                  # blocks 1…depth are warmed up; block<depth> is aligned
    weight: float = 0.5             # c0 of the phase-2 alignment weight c0·2^(−step/half_life)
    half_life: int = 500            # h, in steps (scaled to the embedded data's run lengths)
    warmup_steps: int = 200         # phase 1
    proj_dim: int = 512

    @property
    def schedule(self) -> str:
        return f"exp:{self.half_life}"


class ERW(REPA):
    """ERW — embedded representation warm-up (Liu et al., arXiv 2504.10188).

    Phase 1 (:meth:`initialize`, a fresh run only): a copy of the net and of the REPA projector
    train for ``warmup_steps`` on clean inputs (``t = t_min``) with the alignment loss alone, so
    only the parts up to block ``depth`` (patch, time and class embedders, blocks 1…depth) and the
    projector receive gradients.  Phase 2: exactly those tensors (the ones that received a
    gradient; listed in the checkpointed state) are copied into the full net and the projector,
    the EMA restarts from them, and training goes on normally with REPA whose weight decays as
    ``c0·2^(−step/h)``.  The transfer is explicit on every path (the reference code's happened on
    one resume path only); a resume continues from the checkpoint and skips phase 1.
    """

    name = "erw"

    def __init__(self, options: ErwOptions):
        if options.warmup_steps < 0:
            raise DiffrepError(f"erw: warmup_steps must be ≥ 0, got {options.warmup_steps}")
        super().__init__(options)
        self.transferred: list[str] = []
        self.warmup_align: list[float] = []

    def initialize(self, net, warm):
        if self.options.warmup_steps == 0:
            return False
        self.transfer(*self.warm_up(net, warm), net)
        return True

    def warm_up(self, net: nn.Module, warm: WarmStart) -> tuple[nn.Module, nn.Module]:
        """Phase 1 on copies of ``net`` and the projector; returns the trained copies."""
        from tqdm import tqdm

        student, projector = copy.deepcopy(net).train(), copy.deepcopy(self.projector)
        optimizer = warm.make_optimizer([p for m in (student, projector) for p in m.parameters() if p.requires_grad])
        denoiser, tap = self.process.denoiser(student, warm.autocast), self.taps[0]
        losses = []
        for k in tqdm(range(self.options.warmup_steps), desc="erw warm-up", disable=not warm.progress):
            batch = warm.batch(k)
            t = torch.full_like(batch.t, self.process.t_min)
            hidden = denoiser.hidden(self.process.corrupt(batch.x0, t, batch.noise), t, batch.cond, (tap,))
            with torch.autocast(batch.x0.device.type, dtype=torch.bfloat16, enabled=warm.autocast):
                loss = -self.alignment(projector, hidden[tap], batch.x0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        self.warmup_align = [float(losses[0]), float(losses[-1])]
        return student, projector

    def transfer(self, student: nn.Module, projector: nn.Module, net: nn.Module) -> None:
        """Phase 2's explicit transfer: every tensor of ``student`` that received a gradient, and the projector."""
        trained = {name for name, p in student.named_parameters() if p.grad is not None}
        net.load_state_dict({k: v for k, v in student.state_dict().items() if k in trained}, strict=False)
        self.projector.load_state_dict(projector.state_dict())
        self.transferred = sorted(trained)

    def extra_state(self) -> dict:
        """The transferred tensors' names and the warm-up's first and last alignment loss."""
        return {"transferred": self.transferred, "warmup_align": self.warmup_align}

    def load_extra_state(self, state: dict) -> None:
        self.transferred, self.warmup_align = list(state["transferred"]), list(state["warmup_align"])


# ---------------------------------------------------------------- SRA

@dataclass
class SraOptions:
    student_block: int = 2          # SiT-XL: 8
    teacher_block: int = 4          # of the EMA net (SiT-XL: 20, DiT-XL: 16)
    weight: float = 0.5
    time_gap: float = 0.2           # teacher time t' = t − time_gap·U(0, 1)·t_max, not below t_min
    schedule: str = "constant"

    def __post_init__(self):
        if self.teacher_block <= self.student_block:
            raise DiffrepError(f"sra: teacher_block ({self.teacher_block}) must be deeper than student_block "
                               f"({self.student_block})")


class SRA(Plugin):
    """SRA — self-representation alignment (Jiang et al., arXiv 2505.02831).

    No external encoder: the teacher is the EMA model at a *less noisy* time
    ``t' = max(t_min, t − time_gap·t_max·u)``, ``u ~ U(0, 1)`` (drawn per sample from the step's
    plug-in draws; under EDM the gap is taken in the flow time σ/(1 + σ):
    :meth:`~diffrep.processes.Process.less_noisy`), with the same noise and labels and no gradient.  The student's tokens after
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

    def transform_batch(self, batch, step, draws):
        self._u = draws.uniform().to(batch.t.device)
        return batch

    def loss_terms(self, batch, output, step, ema):
        t_teacher = self.process.less_noisy(batch.t, self.options.time_gap * self._u)
        with torch.no_grad():
            x_teacher = self.process.corrupt(batch.x0, t_teacher, batch.noise)
            autocast = torch.is_autocast_enabled(x_teacher.device.type)      # the run's precision
            hidden = self.process.denoiser(ema, autocast).hidden(x_teacher, t_teacher, batch.cond, (self.teacher_tap,))
        student = self.head(as_tokens(output.taps[self.taps[0]]).float()).float()
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
    """CEP — condition embedding perturbation, "slight corruption" (Chen et al., arXiv 2405.20494).

    During the student's training forward passes a small random δ is added to the class
    embedding (a forward hook on the net's label embedding; the EMA net, sampling and
    evaluation never see it).  δ is drawn per sample from the step's plug-in draws, so a resume
    stays exact and the run does not depend on the number of processes or micro-batches.  It adds no loss term.
    """

    name = "cep"

    def __init__(self, options: CepOptions):
        super().__init__()
        if options.noise not in ("uniform", "gaussian"):
            raise DiffrepError(f"cep: noise={options.noise!r}: choose uniform or gaussian")
        self.options = options
        self._draws: BatchDraws | None = None
        self._step = 0

    def setup(self, net, ema, process, image_shape) -> None:
        if getattr(net, "y_embedder", None) is None:
            raise DiffrepError("cep perturbs the class embedding: it needs a class-conditional model")
        net.y_embedder.register_forward_hook(self._perturb)

    def transform_batch(self, batch, step, draws):
        self._draws, self._step = draws, step
        return batch

    def _perturb(self, module: nn.Module, inputs, embedding: torch.Tensor) -> torch.Tensor:
        if not module.training or self._draws is None:
            return embedding
        scale = self.options.gamma / math.sqrt(embedding.shape[-1]) * schedule_factor(self.options.schedule,
                                                                                        self._step)
        draw = self._draws.uniform if self.options.noise == "uniform" else self._draws.normal
        delta = draw(*embedding.shape[1:])
        if self.options.noise == "uniform":
            delta = 2 * delta - 1
        self._draws = None                         # one draw per micro-batch
        return embedding + scale * delta.to(embedding)


# ---------------------------------------------------------------- DDAE++ self-conditioning

@dataclass
class SelfCondOptions:
    source: int = -1                # block whose mean features condition the later blocks; −1 = the middle


class SelfCond(Plugin):
    """selfcond — DDAE++ self-conditioning (Xiang et al., arXiv 2505.10999).

    An architecture option rather than a loss: the net is built with
    :class:`diffrep.nets.common.SelfCondition`, which adds an MLP of the mean of block ``source``'s
    features to the conditioning vector of every later block (DiT) or of the decoder (U-Net,
    from its middle block).  Its weights are part of the net, so sampling, the EMA and exported
    models keep it; the last layer starts at zero, so training starts from the plain net.
    About 1% more compute.  No loss term.
    """

    name = "selfcond"

    def __init__(self, options: SelfCondOptions):
        super().__init__()
        if options.source == 0:
            raise DiffrepError("selfcond: source=0 turns self-conditioning off; use a block index or -1 (the middle)")
        self.options = options

    @classmethod
    def net_options(cls, options) -> dict:
        return {"self_condition": options.source}

    def setup(self, net, ema, process, image_shape) -> None:
        if getattr(net, "self_cond", None) is None:
            raise DiffrepError("selfcond: the net was built without self-conditioning; list the plug-in in the "
                               "run's config (--plugin selfcond) so the trainer builds it in")


# ---------------------------------------------------------------- UMD

@dataclass
class UmdOptions:
    clean_fraction: float = 0.5     # share of steps on the clean (MAE) branch
    clean_mask: float = 0.75        # mask ratio of the clean branch
    noisy_mask: float = 0.375       # mask ratio of the noised branch
    decoder_blocks: int = 2         # the last blocks see every token, with a mask token where masked
    weight: float = 1.0             # x0 loss on masked patches
    schedule: str = "constant"
    unmask_after: int = 0           # from this step on, plain training without masks; 0 = never


class UMD(Plugin):
    """UMD — unified masked diffusion (Hansen-Estruch et al., arXiv 2406.17688), for DiTs.

    A step's batch takes one of two branches: with probability ``clean_fraction`` the clean image
    (``t = t_min``) with ``clean_mask`` of its patches masked and only an MAE-style x0 loss on
    the masked patches; otherwise the noised image with ``noisy_mask`` masked, the usual
    denoising loss on the visible patches and the x0 loss on the masked ones.  Masked tokens are
    dropped before the first block (forward pre-hooks on the student only) and come back as a
    learned mask token (+ position) before the last ``decoder_blocks`` blocks; at masked patches
    the net's raw output is read as x0.  Sampling uses every token and never sees the mask
    token, which is a head (not exported).  The mask stays set until the next micro-batch, so
    activation checkpointing's recomputation masks alike.  diffrep's choice: the paper splits every batch
    between the branches; here the whole batch of a step takes one branch (same mixture in
    expectation), so there is still one forward per micro-batch, and the branch does not depend
    on how the batch is split over processes and micro-batches.  Taps of the encoder blocks hold the visible
    tokens only: combine with plug-ins that tap the decoder blocks.  ``unmask_after`` ends the
    masking at a step, for a final phase of plain training (MaskDiT's unmasked fine-tuning,
    arXiv 2306.09305, which closes the gap between masked training and unmasked sampling).
    """

    name = "umd"

    def __init__(self, options: UmdOptions):
        super().__init__()
        for key in ("clean_fraction", "clean_mask", "noisy_mask"):
            if not 0 <= getattr(options, key) < 1:
                raise DiffrepError(f"umd: {key} must be in [0, 1), got {getattr(options, key)}")
        self.options = options
        self._keep: torch.Tensor | None = None
        self._masked: torch.Tensor | None = None

    def setup(self, net, ema, process, image_shape) -> None:
        blocks = getattr(net, "blocks", None)
        if blocks is None or not hasattr(net, "pos_embed"):
            raise DiffrepError("umd masks patch tokens: it needs a DiT (--model DiT-…)")
        if not 1 <= self.options.decoder_blocks < len(blocks):
            raise DiffrepError(f"umd: decoder_blocks must be in 1…{len(blocks) - 1}, got {self.options.decoder_blocks}")
        self.process, self.grid, self.patch = process, net.grid, net.patch_size
        self._net = [net]           # a plain list: the net is not a sub-module of the plug-in
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, net.hidden_size))
        self.encoder_blocks = len(blocks) - self.options.decoder_blocks
        blocks[0].register_forward_pre_hook(self._drop_masked)
        blocks[self.encoder_blocks].register_forward_pre_hook(self._restore_masked)

    def check_taps(self, taps: set[str]) -> None:
        visible_only = sorted(taps & {f"block{k}" for k in range(1, self.encoder_blocks + 1)})
        if visible_only:
            k = self.encoder_blocks
            raise DiffrepError(f"umd: {', '.join(visible_only)}, tapped by another plug-in, holds only the unmasked "
                               f"tokens (umd's encoder is blocks 1…{k}): tap block{k + 1} or later "
                               f"(e.g. repa:depth={k + 1}), or raise umd:decoder_blocks")

    def transform_batch(self, batch, step, draws):
        if 0 < self.options.unmask_after <= step:
            self._keep = self._masked = None
            return batch
        n, tokens = batch.x0.shape[0], self.grid * self.grid
        clean = draws.shared_uniform() < self.options.clean_fraction
        ratio = self.options.clean_mask if clean else self.options.noisy_mask
        keep = draws.uniform(tokens).argsort(1)[:, : tokens - round(ratio * tokens)]
        keep = keep.sort(1).values.to(batch.x0.device)
        masked = torch.ones(n, tokens, device=batch.x0.device).scatter(1, keep, 0.0).view(n, 1, self.grid, self.grid)
        self._keep = keep
        self._masked = masked.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        if clean:
            return batch.replace(t=torch.full_like(batch.t, self.process.t_min), loss_weight=torch.zeros_like(self._masked))
        return batch.replace(loss_weight=1.0 - self._masked)

    def _drop_masked(self, block: nn.Module, args):
        if self._keep is None or not block.training:
            return None
        h, c = args
        return h.gather(1, self._keep[..., None].expand(-1, -1, h.shape[-1])), c

    def _restore_masked(self, block: nn.Module, args):
        if self._keep is None or not block.training:
            return None
        h, c = args
        full = (self.mask_token + self._net[0].pos_embed).to(h.dtype).expand(h.shape[0], -1, -1)
        return full.scatter(1, self._keep[..., None].expand(-1, -1, h.shape[-1]), h), c

    def loss_terms(self, batch, output, step, ema):
        masked = self._masked
        if masked is None:
            return {}
        error = ((output.raw - batch.x0).pow(2) * masked).sum() / (masked.sum() * batch.x0.shape[1]).clamp_min(1)
        return {"masked_x0": self.options.weight * schedule_factor(self.options.schedule, step) * error}


# ---------------------------------------------------------------- ConPreDiff context prediction

@dataclass
class ContextOptions:
    block: int = 0                  # tapped block whose tokens predict their neighbourhood; 0 = the last
    max_stride: int = 2             # rings of neighbours: the 8 at each stride 1…max_stride
    hidden: int = 256               # context decoder width
    weight: float = 0.5
    schedule: str = "constant"


class Context(Plugin):
    """context — ConPreDiff context prediction (Yang et al., arXiv 2401.02015).

    A context decoder (an MLP head on the tokens of block ``block``; removed at sampling) predicts,
    for every token, the clean image patches of its neighbours at strides 1…``max_stride`` (8 per
    stride), and
    is trained with their mean squared error where the neighbour lies inside the image.  No code
    is public; diffrep's choice: the paper decodes a large neighbourhood as a distribution with an
    optimal-transport (Wasserstein) loss; at these small neighbourhoods (8–16 positions) every
    neighbour's position is known, so each is predicted at its position with an L2 loss.
    """

    name = "context"

    def __init__(self, options: ContextOptions):
        super().__init__()
        if options.max_stride < 1:
            raise DiffrepError(f"context: max_stride must be ≥ 1, got {options.max_stride}")
        self.options = options
        self.offsets = [(dy * s, dx * s) for s in range(1, options.max_stride + 1)
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]

    def setup(self, net, ema, process, image_shape) -> None:
        tap = f"block{self.options.block}" if self.options.block else net.tap_names[-1]
        self.taps = (tap,)
        shape = _hidden_shape(net, image_shape, tap)
        tokens = shape[1] * shape[2] if len(shape) == 3 else shape[0]
        self.grid = math.isqrt(tokens)
        if self.grid * self.grid != tokens or image_shape[1] % self.grid:
            raise DiffrepError(f"context: {tap} has {tokens} tokens, not a square grid dividing the image")
        self.patch = image_shape[1] // self.grid
        self.patch_dim = image_shape[0] * self.patch**2
        h = self.options.hidden
        self.decoder = _mlp([_token_dim(shape), h, h, len(self.offsets) * self.patch_dim])

    def loss_terms(self, batch, output, step, ema):
        n, g, reach = batch.x0.shape[0], self.grid, max(max(abs(dy), abs(dx)) for dy, dx in self.offsets)
        pred = self.decoder(as_tokens(output.taps[self.taps[0]]).float()).float()
        pred = pred.view(n, g, g, len(self.offsets), self.patch_dim)
        patches = F.unfold(batch.x0, self.patch, stride=self.patch).view(n, self.patch_dim, g, g)
        padded = F.pad(patches, (reach,) * 4)
        inside = F.pad(torch.ones(1, 1, g, g, device=batch.x0.device), (reach,) * 4)
        error, count = 0.0, 0.0
        for i, (dy, dx) in enumerate(self.offsets):
            window = (slice(None), slice(None), slice(reach + dy, reach + dy + g), slice(reach + dx, reach + dx + g))
            target, valid = padded[window].permute(0, 2, 3, 1), inside[window].permute(0, 2, 3, 1)
            error = error + (valid * (pred[:, :, :, i] - target).pow(2)).sum()
            count = count + valid.sum() * n * self.patch_dim
        return {"context": self.options.weight * schedule_factor(self.options.schedule, step) * error / count}


# ---------------------------------------------------------------- registry

PLUGINS: dict[str, tuple[type[Plugin], type]] = {
    "repa": (REPA, RepaOptions), "sra": (SRA, SraOptions), "erw": (ERW, ErwOptions), "cep": (CEP, CepOptions),
    "selfcond": (SelfCond, SelfCondOptions), "umd": (UMD, UmdOptions), "context": (Context, ContextOptions),
}


def plugin_net_options(specs: list[str]) -> dict:
    """The net constructor options the plug-ins of ``specs`` ask for (no plug-in is built)."""
    options: dict = {}
    for spec in specs:
        name, parsed = parse_plugin(spec)
        options.update(PLUGINS[name][0].net_options(parsed))
    return options


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
        if key in fields and not sep:
            raise DiffrepError(f"{name}: option {key!r} needs a value, e.g. {key}={fields[key].default}")
        if key not in fields:
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
