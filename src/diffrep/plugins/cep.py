"""CEP: condition embedding perturbation (arXiv 2405.20494)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.nets.capabilities import require
from diffrep.plugins.base import Plugin, schedule_factor
from diffrep.rng import BatchDraws

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

    def setup(self, net, ema, process, x0_shape, pixel_shape) -> None:
        require(net, "label_embedding", "cep (it perturbs the class embedding)",
                "train a class-conditional model (data with labels, without --unconditional)")
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
