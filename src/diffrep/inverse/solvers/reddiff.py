"""RED-diff: restoration as variational inference with the diffusion model as a regulariser (arXiv 2305.04391)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffrep.inverse.operators import Operator
from diffrep.inverse.prior import Prior
from diffrep.inverse.solvers.noise import randn


@dataclass
class RedDiff:
    """Adam on the mean ``μ`` of a Gaussian posterior, one step per noise level from high to low
    (paper eq. 9 and Alg. 1): ``loss = mean‖y − A μ‖²/2 + λ·w_s·mean(sg(ε̂ − ε)·μ)`` with
    ``x_s = μ + s·ε`` (VE form of ``x_t = α μ + σ ε``) and ``w_s = s = σ/α`` (1/√SNR); ``μ₀ = A⁺y``.
    No gradient flows through the net.  Defaults: λ 0.25, Adam lr 0.1, betas (0.9, 0.99), as the
    official configuration (its README's lr 0.5 with 100 steps overshoots on 28-pixel digits); 100 steps.
    The data term is not divided by σ_y², as in the official code, which folds it into λ.  Both terms are
    means per image summed over the batch, so Adam's per-pixel steps do not depend on the batch size.
    """

    steps: int = 100
    lr: float = 0.1
    lam: float = 0.25

    uses_prior = True
    needs_svd = False

    def nfe(self) -> int:
        return self.steps

    def solve(self, prior: Prior, op: Operator, y: torch.Tensor, sigma_y: float, generator: torch.Generator):
        mu = op.pinv(y).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([mu], lr=self.lr, betas=(0.9, 0.99))
        for s in prior.levels(self.steps)[:-1]:
            eps = randn(mu, generator)
            with torch.no_grad():
                eps_hat = prior(mu.detach() + s * eps, s).eps
            with torch.enable_grad():
                data = ((y - op(mu)) ** 2).flatten(1).mean(1) / 2
                reg = ((eps_hat - eps) * mu).flatten(1).mean(1)
                loss = (data + self.lam * s * reg).sum()
                opt.zero_grad()
                loss.backward()
            opt.step()
        return mu.detach()
