"""Guidance distillation, stage 1 of Meng et al. (arXiv 2210.03142): one forward of the student does what two of its
teacher do under classifier-free guidance."""

from __future__ import annotations

import torch

from diffrep.distill.teacher import TeacherObjective
from diffrep.loss import Batch, LossOutput
from diffrep.nets.common import null_condition
from diffrep.processes import Denoiser
from diffrep.rng import BatchDraws
from diffrep.runs import Run


class GuidanceDistillation(TeacherObjective):
    """The student ``F(x_t, t, c, s)`` regresses onto the teacher's guided output ``F_u + s·(F_c − F_u)`` at
    ``s ~ U[1, max_scale]`` per sample (the paper's ``w = s − 1`` drawn from ``[0, w_max]``).

    The regression is on the process's raw output with the teacher's training weighting: every process's prediction
    is affine in the raw output at a given ``(x_t, t)``, so this target is the teacher's guided ``x̂0`` and ``ε̂``
    exactly.  A sample whose label was dropped (the run's label dropout) learns the unconditional output, which CFG
    leaves unchanged at every scale.
    """

    def __init__(self, teacher: Run, max_scale: float, autocast: bool):
        super().__init__(teacher, autocast)
        self.max_scale = max_scale

    @torch.no_grad()
    def target(self, xt: torch.Tensor, batch: Batch, scale: torch.Tensor) -> torch.Tensor:
        """The teacher's guided raw output at ``x_t`` (both branches in one batched forward), per-sample ``scale``."""
        image = None if batch.image is None else torch.cat([batch.image, batch.image])
        both, _ = self.teacher.raw(torch.cat([xt, xt]), torch.cat([batch.t, batch.t]),
                                   torch.cat([batch.cond, null_condition(batch.cond)]), (), image)
        raw_c, raw_u = both.chunk(2)
        return raw_u + scale.reshape(-1, *([1] * (xt.ndim - 1))) * (raw_c - raw_u)

    def __call__(self, denoiser: Denoiser, batch: Batch, step: int, taps: tuple[str, ...] = (),
                 draws: BatchDraws | None = None) -> LossOutput:
        scale = 1.0 + (self.max_scale - 1.0) * draws.uniform().to(batch.x0.device)
        xt = denoiser.process.corrupt(batch.x0, batch.t, batch.noise)
        target = self.target(xt, batch, scale)
        raw, hidden = denoiser.raw(xt, batch.t, batch.cond, taps, batch.image, guidance_scale=scale)
        loss = (raw - target).pow(2).flatten(1).mean(1).mean()
        return LossOutput(loss, {"distill": loss.detach()}, hidden, raw)
