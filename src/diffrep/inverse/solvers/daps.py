"""DAPS: decoupled annealing posterior sampling (arXiv 2407.01521)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffrep.errors import DiffrepError
from diffrep.inverse.operators import Operator
from diffrep.inverse.prior import Prior
from diffrep.inverse.solvers.noise import randn, start


@dataclass
class DAPS:
    """At each of ``anneal_steps`` noise levels ``s`` (σ from 100 to 0.01): solve the probability-flow ODE
    from ``x`` to ``x̂0`` (``ode_steps`` Euler steps), run Langevin dynamics on
    ``p(x0 | x, y) ∝ N(x0; x̂0, s²) · N(y; A x0, σ_y²)`` (paper eq. 9, ``r_t = σ_t``) from ``x̂0``, then
    re-noise ``x = x0 + s_next·ε`` — the sample decouples from the previous step (paper Alg. 1).
    Scaled-down defaults (the paper: 200 × 5 net calls, 100 Langevin steps): 50 levels × 4 Euler steps,
    the paper's 100 Langevin steps at lr 1e-4 (fewer leave the chain unmixed: at σ_y = 0.05 a step contracts the
    measured part by 4%).  σ ends at 0.01, not the paper's 0.1: the last Langevin chain leaves noise of
    σ_min in the image, which on 32-pixel digits cost SSIM 0.64 → 0.37 (box inpainting, 30 digits).
    """

    anneal_steps: int = 50
    ode_steps: int = 4
    langevin_steps: int = 100
    lr: float = 1e-4
    s_max: float = 100.0
    s_min: float = 0.01

    uses_prior = True
    needs_svd = False

    def nfe(self) -> int:
        return self.anneal_steps * self.ode_steps

    def solve(self, prior: Prior, op: Operator, y: torch.Tensor, sigma_y: float, generator: torch.Generator):
        if sigma_y <= 0:
            raise DiffrepError("DAPS's Langevin step needs measurement noise: pass --sigma-y > 0")
        levels, x = start(prior, op, y, generator, self.anneal_steps, s_max=self.s_max, s_min=self.s_min)
        x0 = x
        for s, s_next in zip(levels[:-1], levels[1:]):
            x0_hat = self._ode(prior, x, s)
            x0 = x0_hat.clone()
            for _ in range(self.langevin_steps):
                grad = (x0_hat - x0) / s**2 - op.adjoint(op(x0) - y) / sigma_y**2
                x0 = x0 + self.lr * grad + math.sqrt(2 * self.lr) * randn(x0, generator)
            x = x0 + s_next * randn(x0, generator) if s_next > 0 else x0
        return x0

    def _ode(self, prior: Prior, x: torch.Tensor, s: float) -> torch.Tensor:
        """Euler on ``dx/ds = (x − x̂0(x, s))/s`` from ``s`` to 0 on a ρ = 7 grid."""
        grid = prior.levels(self.ode_steps, s_max=s, s_min=min(0.01, s / 10))
        with torch.no_grad():
            for a, b in zip(grid[:-1], grid[1:]):
                x0 = prior(x, a).x0
                x = x0 if b == 0 else x + (b - a) * (x - x0) / a
        return x
