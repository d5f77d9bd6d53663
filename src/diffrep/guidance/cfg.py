"""Classifier-free guidance as a denoiser wrapper (arXiv 2207.12598), with a guidance interval (arXiv 2404.07724), and
its one-forward form for a guidance-distilled student (arXiv 2210.03142)."""

from __future__ import annotations

import warnings
from functools import partial
from typing import Callable

import torch

from diffrep.nets.common import null_condition
from diffrep.processes import Prediction


class ClassifierFreeGuidance:
    """``x0 = x0_u + w·(x0_c − x0_u)`` (and the same for ε) where ``lo ≤ t ≤ hi`` in the process's own time
    units (t for flow/VP, σ for EDM); the plain conditional prediction outside it.  Both branches run in one
    batched forward.  ``t`` may be a number or a per-sample tensor of shape ``B``; the interval is tested in
    float64 on the value the sampler passed, so a grid point on an endpoint is guided.
    """

    def __init__(self, denoiser, scale: float, interval: tuple[float, float] | None = None):
        self.denoiser, self.scale = denoiser, scale
        self.interval = interval or (0.0, float("inf"))
        self.process = denoiser.process

    def inside(self, t) -> bool | torch.Tensor:
        """Whether ``t`` lies in the guidance interval: a bool for one time, a bool tensor for per-sample times."""
        lo, hi = self.interval
        if isinstance(t, torch.Tensor) and t.ndim > 0 and t.numel() > 1:
            t64 = t.to(torch.float64)
            return (t64 >= lo) & (t64 <= hi)
        value = float(t.reshape(()).to(torch.float64)) if isinstance(t, torch.Tensor) else float(t)
        return lo <= value <= hi

    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor | None = None, taps: tuple[str, ...] = ()) -> Prediction:
        inside = None if cond is None or self.scale == 1.0 else self.inside(t)
        if inside is None or inside is False or (isinstance(inside, torch.Tensor) and not inside.any()):
            return self.denoiser(x, t, cond, taps)
        per_sample = isinstance(inside, torch.Tensor)
        both = self.denoiser(torch.cat([x, x]), torch.cat([t, t]) if per_sample else t,
                             torch.cat([cond, null_condition(cond)]), taps)
        (x0_c, x0_u), (eps_c, eps_u) = both.x0.chunk(2), both.eps.chunk(2)
        hidden = {k: v.chunk(2)[0] for k, v in both.hidden.items()}
        x0, eps = x0_u + self.scale * (x0_c - x0_u), eps_u + self.scale * (eps_c - eps_u)
        if per_sample:
            keep = inside.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
            x0, eps = torch.where(keep, x0, x0_c), torch.where(keep, eps, eps_c)
        return Prediction(x0, eps, hidden)


class DistilledGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance of a guidance-distilled student (arXiv 2210.03142): one forward with the scale as the
    net's input (``guidance_scale``) instead of two branches; scale 1 (the conditional model) outside the interval."""

    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor | None = None, taps: tuple[str, ...] = ()) -> Prediction:
        inside = False if cond is None else self.inside(t)
        if isinstance(inside, torch.Tensor):
            scale = torch.where(inside.to(x.device), self.scale, 1.0).float()
        else:
            scale = torch.full((x.shape[0],), self.scale if inside else 1.0, device=x.device)
        return self.denoiser(x, t, cond, taps, guidance_scale=scale)


def cfg_wrapper(scale: float, interval: tuple[float, float] | None = None,
                scale_range: tuple[float, float] | None = None) -> Callable:
    """Classifier-free guidance at ``scale`` as a wrapper: two branches, or one forward of a guidance-distilled
    student (``scale_range``: the scales it was trained on; a warning outside them, where it extrapolates)."""
    if scale_range is None:
        return partial(ClassifierFreeGuidance, scale=scale, interval=interval)
    lo, hi = scale_range
    if not lo <= scale <= hi:
        warnings.warn(f"guidance scale {scale:g} is outside the {lo:g}…{hi:g} this guidance-distilled student was "
                      f"trained on: its output there is an extrapolation (distil with a larger --max-scale)",
                      stacklevel=3)
    return partial(DistilledGuidance, scale=scale, interval=interval)
