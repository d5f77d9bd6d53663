"""Schedules over optimiser steps: the learning rate and the EMA decay."""

from __future__ import annotations

from diffrep.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant (DiT / SiT / REPA), so a run can be extended by raising ``--steps``."""
    return warmed_up(cfg.lr, cfg.warmup, step)


def warmed_up(lr: float, warmup: int, step: int) -> float:
    """``lr`` after a linear warm-up of ``warmup`` steps, at optimiser step ``step``."""
    return lr * min(1.0, (step + 1) / max(warmup, 1))


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay used after optimiser step ``step``; 0 (a plain copy) before ``--ema-start``.

    After it the decay ramps up as ``min(ema_decay, (1 + k) / (10 + k))``, ``k`` = steps since
    ``ema_start`` (the ``num_updates`` warm-up of TensorFlow's ExponentialMovingAverage), so a
    short run's EMA is not dominated by the initial weights: at decay 0.999 a constant
    decay would still hold 30% of the initialisation after 1,200 steps.
    """
    if step < cfg.ema_start:
        return 0.0
    return ramped_decay(cfg.ema_decay, step - cfg.ema_start)


def ramped_decay(decay: float, k: int) -> float:
    """``min(decay, (1 + k) / (10 + k))`` at ``k`` steps since the EMA started (:func:`ema_decay_at`)."""
    return min(decay, (1 + k) / (10 + k))
