"""SRA: self-representation alignment with the EMA model as teacher (arXiv 2505.02831)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffrep.errors import DiffrepError
from diffrep.plugins.base import Plugin, schedule_factor
from diffrep.plugins.tokens import hidden_shape, mlp, token_dim, as_tokens, match_token_grid

SRA_LOSSES = {
    "cos": "1 − cosine per token over channels, averaged (diffrep's default)",
    "cos-tokens": "1 − cosine per channel over the token axis, averaged (the official code's current default, dim=1)",
    "sml1": "smooth-L1 with β 0.05 (the paper's runs; it used weight 0.2, decayed late: schedule=step:S)",
}
"""SRA's alignment losses between the head's student tokens and the teacher's tokens (``B×N×D``)."""

SML1_BETA = 0.05


def alignment_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The :data:`SRA_LOSSES` entry ``kind`` of ``B×N×D`` token sets."""
    if kind == "sml1":
        return F.smooth_l1_loss(student, teacher, beta=SML1_BETA)
    return 1 - F.cosine_similarity(student, teacher, dim=1 if kind == "cos-tokens" else -1).mean()


@dataclass
class SraOptions:
    student_block: int = 2          # SiT-XL: 8
    teacher_block: int = 4          # of the EMA net (SiT-XL: 20, DiT-XL: 16)
    weight: float = 0.5
    time_gap: float = 0.2           # teacher time t' = t − time_gap·U(0, 1)·t_max, not below t_min
    schedule: str = "constant"
    loss: str = "cos"               # cos | cos-tokens | sml1 (see SRA_LOSSES)

    def __post_init__(self):
        if self.loss not in SRA_LOSSES:
            raise DiffrepError(f"sra: unknown loss {self.loss!r}: choose {', '.join(SRA_LOSSES)}")
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
    the teacher's tokens after ``teacher_block``: loss ``weight·(1 − mean cos)``, a per-token cosine at a
    constant weight, by default.  ``loss=sml1`` is the paper's loss (smooth-L1, β 0.05; its runs used λ 0.2
    decayed after epoch 149: ``weight=0.2,schedule=step:S``), ``loss=cos-tokens`` the official code's current
    default (a cosine taken over the token axis).
    """

    name = "sra"

    def __init__(self, options: SraOptions):
        super().__init__()
        self.options = options
        self.taps = (f"block{options.student_block}",)
        self.teacher_tap = f"block{options.teacher_block}"
        self._u: torch.Tensor | None = None

    def setup(self, net, ema, process, x0_shape, pixel_shape) -> None:
        self.process = process
        d_student = token_dim(hidden_shape(net, x0_shape, self.taps[0]))
        d_teacher = token_dim(hidden_shape(ema, x0_shape, self.teacher_tap))
        self.head = mlp([d_student, 2 * d_student, d_teacher])

    def transform_batch(self, batch, step, draws):
        self._u = draws.uniform().to(batch.t.device)
        return batch

    def loss_terms(self, batch, output, step, ema):
        t_teacher = self.process.less_noisy(batch.t, self.options.time_gap * self._u)
        with torch.no_grad():
            x_teacher = self.process.corrupt(batch.x0, t_teacher, batch.noise)
            autocast = torch.is_autocast_enabled(x_teacher.device.type)      # the run's precision
            hidden = self.process.denoiser(ema, autocast).hidden(x_teacher, t_teacher, batch.cond, (self.teacher_tap,),
                                                                   batch.image)
        student = self.head(as_tokens(output.taps[self.taps[0]]).float()).float()
        teacher = match_token_grid(as_tokens(hidden[self.teacher_tap]).float(), student.shape[1])
        loss = alignment_loss(self.options.loss, student, teacher)
        return {"align": self.options.weight * schedule_factor(self.options.schedule, step) * loss}
