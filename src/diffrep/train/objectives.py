"""The objective seam: what the trainer minimises before the plug-ins add their terms.

An objective is called as ``objective(denoiser, batch, step, taps) -> LossOutput`` on each
micro-batch: ``denoiser`` wraps the net being trained (DDP/FSDP/compiled as the run asks), ``batch``
carries the step's draws, ``taps`` the hidden states the plug-ins need.  The default is the
denoising loss of the run's process; a distillation objective holds its teacher run and is passed
to :class:`~diffrep.train.Trainer` as ``objective=``.
"""

from __future__ import annotations

from typing import Protocol

from diffrep.loss import Batch, LossOutput, denoising_loss
from diffrep.processes import Denoiser


class Objective(Protocol):
    def __call__(self, denoiser: Denoiser, batch: Batch, step: int, taps: tuple[str, ...] = ()) -> LossOutput: ...


class Denoising:
    """The base denoising loss (:func:`diffrep.loss.denoising_loss`): the default objective of every process."""

    def __call__(self, denoiser: Denoiser, batch: Batch, step: int, taps: tuple[str, ...] = ()) -> LossOutput:
        return denoising_loss(denoiser, batch, taps)
