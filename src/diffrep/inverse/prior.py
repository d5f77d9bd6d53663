"""The trained model as a prior, seen in one set of coordinates whatever process trained it.

Solvers work in variance-exploding coordinates (EDM's, arXiv 2206.00364 §2): ``x = x_t/α(t)`` at noise
level ``s = σ(t)/α(t)``, so ``x = x0 + s·ε`` for flow, VP and EDM runs alike.  :class:`Prior` finds the
process time with that ratio (bisection in float64, cached), scales the input by ``α`` and calls the
run's :class:`~diffrep.processes.Denoiser`.  Noise-level grids are EDM's ρ-grid in ``s``.
"""

from __future__ import annotations

from typing import Callable

import torch

from diffrep.processes import Denoiser, Prediction


class Prior:
    """``prior(x, s) -> Prediction`` (clean estimate and noise) for ``x = x0 + s·ε``; ``cond``: labels or ``None``
    (the null class of a class-conditional net: the unconditional prior); ``on_call`` runs at every net call
    (a progress bar)."""

    def __init__(self, denoiser: Denoiser, cond: torch.Tensor | None = None, on_call: Callable[[], None] | None = None):
        self.denoiser, self.process, self.cond, self.on_call = denoiser, denoiser.process, cond, on_call
        self._times: dict[float, tuple[float, float]] = {}

    def ratio(self, t: float) -> float:
        """``σ(t)/α(t)`` in float64 (``inf`` where α is 0)."""
        t64 = torch.tensor([t], dtype=torch.float64)
        a, s = float(self.process.alpha(t64)), float(self.process.sigma(t64))
        return s / a if a > 0 else float("inf")

    def time(self, s: float) -> tuple[float, float]:
        """``(t, α(t))`` with ``σ(t)/α(t) = s`` (the ratio grows with t for every process)."""
        if s not in self._times:
            lo, hi = 0.0, float(self.process.t_max)
            if self.ratio(hi) <= s:
                lo = hi
            for _ in range(80):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if self.ratio(mid) < s else (lo, mid)
            t = 0.5 * (lo + hi)
            self._times[s] = (t, float(self.process.alpha(torch.tensor([t], dtype=torch.float64))))
        return self._times[s]

    def max_level(self) -> float:
        """The largest noise level the process reaches (``inf`` for flow, about 152 for VP, 80 for EDM)."""
        return self.ratio(float(self.process.t_max))

    def __call__(self, x: torch.Tensor, s: float) -> Prediction:
        t, a = self.time(float(s))
        if self.on_call is not None:
            self.on_call()
        return self.denoiser(a * x, t, self.cond)

    def levels(self, steps: int, s_max: float = 80.0, s_min: float = 0.01, rho: float = 7.0) -> list[float]:
        """``steps`` noise levels from ``s_max`` (capped at :meth:`max_level`) to ``s_min`` spaced evenly in ``s^(1/ρ)``,
        then 0."""
        s_max = min(s_max, self.max_level())
        if steps == 1:
            return [s_max, 0.0]
        i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
        hi, lo = s_max ** (1 / rho), s_min ** (1 / rho)
        return ((hi + i * (lo - hi)) ** rho).tolist() + [0.0]
