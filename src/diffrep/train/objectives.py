"""The objective seam: what the trainer minimises before the plug-ins add their terms.

An objective is called as ``objective(denoiser, batch, step, taps, draws) -> LossOutput`` on each
micro-batch: ``denoiser`` wraps the net being trained (DDP/FSDP/compiled as the run asks), ``batch``
carries the step's draws, ``taps`` the hidden states the plug-ins need, ``draws`` the objective's own
random draws (stream ``(seed, step, OBJECTIVE_STREAM)``, made for the global batch and sliced).  The default is the
denoising loss of the run's process; a distillation objective (:mod:`diffrep.distill`, the run's ``distill`` option)
holds its teacher run and may have ``initialize(net)``, which starts a new run's net.
"""

from __future__ import annotations

from typing import Protocol

from diffrep.loss import Batch, LossOutput, denoising_loss
from diffrep.processes import Denoiser
from diffrep.rng import BatchDraws


class Objective(Protocol):
    def __call__(self, denoiser: Denoiser, batch: Batch, step: int, taps: tuple[str, ...] = (),
                 draws: BatchDraws | None = None) -> LossOutput: ...


class Denoising:
    """The base denoising loss (:func:`diffrep.loss.denoising_loss`): the default objective of every process."""

    def __call__(self, denoiser: Denoiser, batch: Batch, step: int, taps: tuple[str, ...] = (),
                 draws: BatchDraws | None = None) -> LossOutput:
        return denoising_loss(denoiser, batch, taps)
