"""DDRM: denoising diffusion restoration models (arXiv 2201.11793)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffrep.inverse.operators import SVDOperator
from diffrep.inverse.prior import Prior
from diffrep.inverse.solvers.noise import randn, start


@dataclass
class DDRM:
    """Sampling in the operator's spectral space (paper eq. 7–8, VE form): each coefficient of
    ``x̄ = Vᵀx`` is drawn around the net's ``x̄0`` where ``A`` does not see it (singular value 0), around
    the measurement ``ȳ = Uᵀy/s`` where the measurement is less noisy than the sample (``s_next ≥ σ_y/s``),
    and between them otherwise.  Defaults from the paper: η 0.85, η_b 1.0, 20 steps.
    """

    steps: int = 20
    eta: float = 0.85
    eta_b: float = 1.0

    uses_prior = True
    needs_svd = True

    def nfe(self) -> int:
        return self.steps

    def solve(self, prior: Prior, op: SVDOperator, y: torch.Tensor, sigma_y: float, generator: torch.Generator):
        levels, x = start(prior, op, y, generator, self.steps)
        sing = op.singulars.to(x).expand_as(x)
        seen = sing > 0
        y_bar = torch.where(seen, op.ut(y) / sing.clamp_min(1e-12), torch.zeros_like(x))
        y_noise = torch.where(seen, sigma_y / sing.clamp_min(1e-12), torch.zeros_like(x))   # σ_y/s per coefficient
        keep = math.sqrt(1 - self.eta**2)
        for s, s_next in zip(levels[:-1], levels[1:]):
            with torch.no_grad():
                x0 = prior(x, s).x0
            x_bar, x0_bar, z = op.vt(x), op.vt(x0), randn(x, generator)
            unseen = x0_bar + keep * s_next * (x_bar - x0_bar) / s + self.eta * s_next * z
            noisier = x0_bar + keep * s_next * (y_bar - x0_bar) / y_noise.clamp_min(1e-12) + self.eta * s_next * z
            cleaner = ((1 - self.eta_b) * x0_bar + self.eta_b * y_bar
                       + (s_next**2 - (self.eta_b * y_noise) ** 2).clamp_min(0).sqrt() * z)
            new = torch.where(~seen, unseen, torch.where(s_next < y_noise, noisier, cleaner))
            x = op.v(new)
        return x
