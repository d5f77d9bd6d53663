"""Training: the loop (:class:`Trainer`), each step's batch, schedules, the optimiser, stop signals."""

from diffrep.train.batches import EpochSampler, draw_batch, step_generator
from diffrep.train.loop import Trainer, TrainingDiverged
from diffrep.train.optim import make_optimizer
from diffrep.train.schedules import ema_decay_at, lr_at
from diffrep.train.signals import StopRequest

__all__ = ["EpochSampler", "StopRequest", "Trainer", "TrainingDiverged", "draw_batch", "ema_decay_at", "lr_at",
           "make_optimizer", "step_generator"]
