"""Baselines without a learned prior: the pseudo-inverse ``A⁺y`` and total-variation regularisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffrep.inverse.operators import Operator


@dataclass
class PseudoInverse:
    """``x = A⁺y``: the minimum-norm least-squares solution (zero in ``A``'s null space)."""

    uses_prior = False
    needs_svd = False

    def nfe(self) -> int:
        return 0

    def solve(self, prior, op: Operator, y: torch.Tensor, sigma_y: float, generator: torch.Generator) -> torch.Tensor:
        return op.pinv(y)


@dataclass
class TotalVariation:
    """MAP under a total-variation prior (Rudin, Osher & Fatemi 1992):
    ``min_x ‖A x − y‖²/(2σ_y²) + weight·Σ √(∂_h x² + ∂_w x² + ε²)``, Adam from ``A⁺y``, per image."""

    steps: int = 300
    lr: float = 0.02
    weight: float = 5.0

    uses_prior = False
    needs_svd = False

    def nfe(self) -> int:
        return 0

    def solve(self, prior, op: Operator, y: torch.Tensor, sigma_y: float, generator: torch.Generator) -> torch.Tensor:
        x = op.pinv(y).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lr)
        noise_var = max(sigma_y, 1e-3) ** 2
        for _ in range(self.steps):
            with torch.enable_grad():
                dh, dw = x[:, :, 1:, :-1] - x[:, :, :-1, :-1], x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
                tv = (dh**2 + dw**2 + 1e-6).sqrt().sum()
                loss = ((op(x) - y) ** 2).sum() / (2 * noise_var) + self.weight * tv
                opt.zero_grad()
                loss.backward()
            opt.step()
        return x.detach()
