"""The plug-in contract: how a training-time method attaches to the one training loop.

A plug-in may declare taps (hidden states of the student it needs), transform the
batch, own trainable heads (optimised with the net, checkpointed with the run,
never part of the exported sampling model), add named loss terms, initialise
weights before training, read the EMA model, and keep checkpointed state.  The
trainer calls the hooks below in this order each step:
``transform_batch`` → base loss (with ``taps``) → ``loss_terms``.
"""

from __future__ import annotations

import torch
from torch import nn

from diffrep.loss import Batch, LossOutput


class Plugin(nn.Module):
    """Base class; every hook defaults to "do nothing"."""

    name = "plugin"
    taps: tuple[str, ...] = ()

    def setup(self, net: nn.Module, ema: nn.Module) -> None:
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
