"""The plug-in contract (see the package docstring) and the schedules of loss weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.loss import Batch, LossOutput
from diffrep.rng import BatchDraws

@dataclass
class WarmStart:
    """What :meth:`Plugin.initialize` may use: ``batch(k)``, the ``k``-th warm-up batch (the global
    batch, on the device, with its own random draws); the run's optimiser for given parameters;
    bf16 autocast on or off; whether to show progress; and the main loop's gradient clipping (0: off) and
    learning rate at step ``k`` (``None``: the optimiser's own), so that a warm-up trains as the run does."""

    batch: Callable[[int], Batch]
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    autocast: bool
    progress: bool = False
    grad_clip: float = 0.0
    lr_at: Callable[[int], float] | None = None


class Plugin(nn.Module):
    """Base class; every hook defaults to "do nothing"."""

    name = "plugin"
    taps: tuple[str, ...] = ()

    @classmethod
    def net_options(cls, options) -> dict:
        """Constructor options of the net this plug-in needs (part of the sampling model, e.g. selfcond)."""
        return {}

    def setup(self, net: nn.Module, ema: nn.Module, process, x0_shape: tuple[int, int, int],
              pixel_shape: tuple[int, int, int]) -> None:
        """Called once before training (and before a resume loads state): build heads, register hooks.  ``x0_shape``:
        what the net sees (a latent in a VAE's space); ``pixel_shape``: the images (what ``batch.pixels`` holds)."""

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
