"""Guidance as denoiser wrappers: samplers never see a guidance flag."""

from __future__ import annotations

import torch

from diffrep.nets.common import NULL_LABEL
from diffrep.processes import Prediction


class ClassifierFreeGuidance:
    """Classifier-free guidance (arXiv 2207.12598) with a guidance interval (arXiv 2404.07724).

    ``x0 = x0_u + w·(x0_c − x0_u)`` (and the same for ε) when ``lo ≤ t ≤ hi`` in the
    process's own time units (t for flow/VP, σ for EDM); plain conditional prediction
    outside it.  Both branches run in one batched forward.
    """

    def __init__(self, denoiser, scale: float, interval: tuple[float, float] | None = None):
        self.denoiser, self.scale = denoiser, scale
        self.interval = interval or (0.0, float("inf"))
        self.process = denoiser.process

    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor | None = None, taps: tuple[str, ...] = ()) -> Prediction:
        t_val = float(torch.as_tensor(t).flatten()[0])
        lo, hi = self.interval
        if cond is None or self.scale == 1.0 or not lo <= t_val <= hi:
            return self.denoiser(x, t, cond, taps)
        both = self.denoiser(torch.cat([x, x]), t, torch.cat([cond, torch.full_like(cond, NULL_LABEL)]), taps)
        (x0_c, x0_u), (eps_c, eps_u) = both.x0.chunk(2), both.eps.chunk(2)
        hidden = {k: v.chunk(2)[0] for k, v in both.hidden.items()}
        return Prediction(x0_u + self.scale * (x0_c - x0_u), eps_u + self.scale * (eps_c - eps_u), hidden)
