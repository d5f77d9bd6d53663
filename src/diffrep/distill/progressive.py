"""Progressive distillation (Salimans & Ho, arXiv 2202.00512): a student whose one DDIM step does what two of its
teacher's do, so that halving again and again takes a sampler from many steps to a few."""

from __future__ import annotations

import torch

from diffrep.distill.teacher import TeacherObjective
from diffrep.loss import Batch, LossOutput
from diffrep.processes import Denoiser
from diffrep.rng import BatchDraws
from diffrep.runs import Run


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class ProgressiveDistillation(TeacherObjective):
    """Algorithm 2 of the paper on the teacher's grid of ``2K`` steps (``process.time_grid(2K)``, whose even points
    are the student's grid of ``K``): for a student step ``t → t''`` drawn uniformly per sample, the teacher takes two
    DDIM steps ``t → t' → t''`` from ``x_t``, and the student's ``x̂0`` regresses onto the one ``x̃`` that takes
    ``x_t`` to the same ``x_t''`` in one DDIM step: ``x̃ = (x_t'' − (σ''/σ)·x_t) / (α'' − (σ''/σ)·α)``.  The loss is
    the paper's truncated-SNR weighting, ``max(α²/σ², 1)·‖x̂0 − x̃‖²``, in whatever parameterisation the run's
    process has (its raw output is affine in ``x̂0``).  A teacher with a guidance-scale input (a guidance-distilled
    student) is distilled at scales drawn from ``[1, max_scale]``, both nets seeing the same scale.
    """

    def __init__(self, teacher: Run, sampling_steps: int, autocast: bool, max_scale: float | None = None):
        super().__init__(teacher, autocast)
        self.steps, self.max_scale = sampling_steps, max_scale
        self.grid = teacher.process.time_grid(2 * sampling_steps)

    def _ddim(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, batch: Batch, inputs: dict) -> torch.Tensor:
        process = self.teacher.process
        pred = self.teacher(x, t.float(), batch.cond, (), batch.image, **inputs)
        return _col(process.alpha(s), x) * pred.x0 + _col(process.sigma(s), x) * pred.eps

    @torch.no_grad()
    def target(self, xt: torch.Tensor, i: torch.Tensor, batch: Batch,
               inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x̃, weight)`` for ``x_t`` at the student's grid points ``i`` (per sample): the teacher's two DDIM steps
        folded into one ``x̂0``, and its truncated-SNR weight ``max(α²/σ², 1)``."""
        process = self.teacher.process
        t, mid, end = (self.grid[2 * i + k].to(xt.device) for k in range(3))       # float64
        z = self._ddim(self._ddim(xt, t, mid, batch, inputs), mid, end, batch, inputs)
        a, s, a_end, s_end = process.alpha(t), process.sigma(t), process.alpha(end), process.sigma(end)
        ratio = s_end / s
        return (z - _col(ratio, z) * xt) / _col(a_end - ratio * a, z), (a**2 / s**2).clamp_min(1.0).float()

    def __call__(self, denoiser: Denoiser, batch: Batch, step: int, taps: tuple[str, ...] = (),
                 draws: BatchDraws | None = None) -> LossOutput:
        process, device = denoiser.process, batch.x0.device
        i = (draws.uniform() * self.steps).long().clamp_max(self.steps - 1)
        inputs = {}
        if self.max_scale is not None:
            inputs["guidance_scale"] = (1.0 + (self.max_scale - 1.0) * draws.uniform()).to(device)
        t = self.grid[2 * i].to(device)       # float64
        xt = process.corrupt(batch.x0, t.float(), batch.noise)
        target, weight = self.target(xt, i, batch, inputs)
        raw, hidden = denoiser.raw(xt, t.float(), batch.cond, taps, batch.image, **inputs)
        x0, _ = process.predict(raw, xt, t.float())
        loss = (weight * (x0 - target).pow(2).flatten(1).mean(1)).mean()
        return LossOutput(loss, {"distill": loss.detach()}, hidden, raw)
