"""Samplers: pure functions with one signature, in the style of k-diffusion.

``sample_X(denoiser, x, ts, *, cond=None, callback=None, generator=None) -> x``

``x`` is the start noise already scaled to ``t = ts[0]`` (see :func:`initial_noise`),
``ts`` a float64 grid from high to low time ending at 0 (``process.time_grid``).  All
samplers work for every process through ``x_t = α(t)·x0 + σ(t)·ε``.  ``callback`` is
called after each step with ``{"i", "t", "x", "x0"}``.  The grid's α, σ and their derivatives are
computed once per call, in float64.  Samplers take no stance on gradients: callers sample under
``torch.inference_mode()`` (as :func:`diffrep.generate.generate` does) or let gradients flow (DPS,
classifier guidance).  Name mapping: "Euler" =
``euler``, "Heun" = ``heun``, "Euler–Maruyama" = ``euler_maruyama``, "DDIM" = ``ddim``,
"DDPM ancestral" = ``ddpm``, "DPM++ 2M" = ``dpmpp_2m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from diffrep.errors import DiffrepError


@dataclass(frozen=True)
class GridCoefficients:
    """``α``, ``σ``, ``α'`` and ``σ'`` at every time of a sampling grid, as Python floats."""

    alpha: list[float]
    sigma: list[float]
    d_alpha: list[float]
    d_sigma: list[float]


def grid_coefficients(process, ts: torch.Tensor) -> GridCoefficients:
    """The process's coefficients at every grid time, from one float64 evaluation each."""
    t = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    return GridCoefficients(*(f(t).tolist() for f in (process.alpha, process.sigma, process.d_alpha, process.d_sigma)))


def initial_noise(process, shape: tuple[int, ...], t_start: torch.Tensor | float, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Pure noise at the grid's first time: ``σ(t_max)·ε`` (the ``α·x0`` part is ≈ 0 there)."""
    sigma = float(process.sigma(torch.as_tensor([float(t_start)], dtype=torch.float64)))
    return sigma * torch.randn(shape, generator=generator).to(device)


def _velocity(denoiser, x, t, cond, c: GridCoefficients, i: int):
    """Probability-flow ODE ``dx/dt = α'(t)·x0 + σ'(t)·ε`` at grid time ``i`` with the denoiser's x0, ε."""
    pred = denoiser(x, float(t), cond)
    return c.d_alpha[i] * pred.x0 + c.d_sigma[i] * pred.eps, pred


def _report(callback, i, t, x, x0):
    if callback is not None:
        callback({"i": i, "t": float(t), "x": x, "x0": x0})


def sample_euler(denoiser, x, ts, *, cond=None, callback: Callable | None = None, generator=None):
    """Euler's method on the probability-flow ODE (SiT ODE sampler; EDM Alg. 1 without the Heun correction)."""
    c = grid_coefficients(denoiser.process, ts)
    for i in range(len(ts) - 1):
        u, pred = _velocity(denoiser, x, ts[i], cond, c, i)
        x = x + float(ts[i + 1] - ts[i]) * u
        _report(callback, i, ts[i], x, pred.x0)
    return x


def sample_heun(denoiser, x, ts, *, cond=None, callback: Callable | None = None, generator=None):
    """Heun's 2nd-order method on the probability-flow ODE (EDM, arXiv 2206.00364, Alg. 1); Euler on the last step to t = 0."""
    c = grid_coefficients(denoiser.process, ts)
    for i in range(len(ts) - 1):
        dt = float(ts[i + 1] - ts[i])
        u, pred = _velocity(denoiser, x, ts[i], cond, c, i)
        x_next = x + dt * u
        if ts[i + 1] > 0:
            u_next, _ = _velocity(denoiser, x_next, ts[i + 1], cond, c, i + 1)
            x_next = x + dt * 0.5 * (u + u_next)
        x = x_next
        _report(callback, i, ts[i], x, pred.x0)
    return x


def sample_euler_maruyama(denoiser, x, ts, *, cond=None, callback: Callable | None = None, generator=None):
    """Euler–Maruyama on the reverse SDE ``dx = [u + w·ε/(2σ)]dt + √w dW̄`` with ``w(t) = σ(t)`` (SiT, arXiv 2401.08740, §3.3).

    ``u`` is the probability-flow velocity and ``−ε/σ`` the score; the last step is deterministic.
    """
    c = grid_coefficients(denoiser.process, ts)
    for i in range(len(ts) - 1):
        t, dt = ts[i], float(ts[i + 1] - ts[i])
        u, pred = _velocity(denoiser, x, t, cond, c, i)
        if ts[i + 1] > 0:
            s = c.sigma[i]
            w = s
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = x + (u + (w / (2 * s)) * pred.eps) * dt + (w * abs(dt)) ** 0.5 * noise
        else:
            x = x + dt * u
        _report(callback, i, t, x, pred.x0)
    return x


def sample_ddim(denoiser, x, ts, *, cond=None, callback: Callable | None = None, generator=None):
    """DDIM, η = 0 (arXiv 2010.02502, eq. 12): ``x_s = α_s·x0 + σ_s·ε``."""
    c = grid_coefficients(denoiser.process, ts)
    for i in range(len(ts) - 1):
        pred = denoiser(x, float(ts[i]), cond)
        a_s, s_s = c.alpha[i + 1], c.sigma[i + 1]
        x = a_s * pred.x0 + s_s * pred.eps
        _report(callback, i, ts[i], x, pred.x0)
    return x


def sample_ddpm(denoiser, x, ts, *, cond=None, callback: Callable | None = None, generator=None):
    """DDPM ancestral sampling (arXiv 2006.11239, eq. 6–7): draw ``x_s ~ q(x_s | x_t, x0̂)`` for any (α, σ) path."""
    c = grid_coefficients(denoiser.process, ts)
    for i in range(len(ts) - 1):
        pred = denoiser(x, float(ts[i]), cond)
        a_t, s_t, a_s, s_s = c.alpha[i], c.sigma[i], c.alpha[i + 1], c.sigma[i + 1]
        if s_s == 0:
            x = pred.x0
        else:
            a_ts = a_t / a_s
            var_ts = s_t**2 - a_ts**2 * s_s**2
            mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * pred.x0
            std = (var_ts * s_s**2 / s_t**2) ** 0.5
            x = mean + std * torch.randn(x.shape, generator=generator).to(x.device)
        _report(callback, i, ts[i], x, pred.x0)
    return x


def sample_dpmpp_2m(denoiser, x, ts, *, cond=None, callback: Callable | None = None, generator=None):
    """DPM-Solver++(2M), the multistep 2nd-order data-prediction solver (arXiv 2211.01095, Alg. 2) in λ = log(α/σ)."""
    c = grid_coefficients(denoiser.process, ts)
    x0_prev, h_prev = None, None
    for i in range(len(ts) - 1):
        pred = denoiser(x, float(ts[i]), cond)
        a_t, s_t, a_s, s_s = c.alpha[i], c.sigma[i], c.alpha[i + 1], c.sigma[i + 1]
        if s_s == 0:
            x = pred.x0
        else:
            lam_t = math.log(a_t / s_t) if a_t > 0 else -math.inf
            h = math.log(a_s / s_s) - lam_t
            d = pred.x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * pred.x0 - (1 / (2 * r)) * x0_prev
            x = (s_s / s_t) * x - a_s * math.expm1(-h) * d
            h_prev = h
        x0_prev = pred.x0
        _report(callback, i, ts[i], x, pred.x0)
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_maruyama": sample_euler_maruyama,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "dpmpp_2m": sample_dpmpp_2m,
}


def network_evaluations(sampler: str, steps: int) -> int:
    """Net calls per image for ``steps`` grid intervals (Heun skips its correction on the last step)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise DiffrepError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
