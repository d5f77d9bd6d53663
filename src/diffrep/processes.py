"""Diffusion processes: the forward corruption, the net's prediction target, one denoiser.

Every process writes the noisy image as ``x_t = α(t)·x0 + σ(t)·ε`` with ``t`` growing
from clean (``t = 0``) to noise (``t = t_max``), and turns the net's raw output into
the same :class:`Prediction` (``x0`` and ``ε``).  Samplers, guidance, probes, the
diffusion classifier and inverse solvers use only ``α``, ``σ``, their derivatives and
the :class:`Denoiser`; none of them needs to know which process trained the model.

- :class:`FlowProcess` — linear interpolant, velocity prediction (SiT, arXiv 2401.08740;
  rectified flow, arXiv 2209.03003): ``α = 1 − t``, ``σ = t``, target ``v = ε − x0``.
- :class:`VPProcess` — variance preserving DDPM (arXiv 2006.11239) in continuous time
  (arXiv 2011.13456), linear β or cosine (arXiv 2102.09672) schedule, ε- or
  v-prediction (arXiv 2202.00512).
- :class:`EDMProcess` — Karras et al. (arXiv 2206.00364): ``t`` is σ, ``α = 1``, with
  the paper's preconditioning (Table 1) and log-normal σ sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from diffrep.errors import DiffrepError


@dataclass
class Prediction:
    """What a denoiser says about ``x_t``: the clean image and the noise, plus any tapped hidden states."""

    x0: torch.Tensor
    eps: torch.Tensor
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``v`` (shape ``B`` or scalar) → broadcastable against ``x``, in ``x``'s dtype."""
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class Process:
    """Base class: subclasses define the schedule, the net's input/target and the time sampling."""

    name: str
    t_max: float
    t_min: float = 0.0
    """The least noisy time the net is trained at (plug-ins use it for "clean" inputs)."""
    grid_rho: float = 1.0
    """Default exponent of :meth:`time_grid` (1: uniform in ``t``)."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times ``t`` (float32, shape ``n``)."""
        raise NotImplementedError

    def time_grid(self, steps: int, rho: float | None = None) -> torch.Tensor:
        """Sampling grid: ``steps + 1`` float64 times ``t_i = t_max·(1 − i/steps)^ρ`` from ``t_max`` down to 0.

        ρ > 1 puts more steps at low noise, as EDM's ρ-grid does (arXiv 2206.00364, eq. 5);
        the last step then starts at ``t_max/steps^ρ``, so less unremoved noise is left in
        the image.  ``rho=None`` takes the process's :attr:`grid_rho`.
        """
        i = torch.arange(steps + 1, dtype=torch.float64)
        return self.t_max * (1.0 - i / steps) ** (self.grid_rho if rho is None else rho)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time the net sees, scaled to roughly [0, 1000] (the range of DiT's embedding)."""
        return 1000.0 * t

    def less_noisy(self, t: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """``t`` moved towards clean by ``gap`` (per sample, a fraction of the whole noise range),
        never below :attr:`t_min`: ``max(t_min, t − gap·t_max)``."""
        return (t - gap * self.t_max).clamp_min(self.t_min)

    def net_input_scale(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _bcast(self.alpha(t), x0) * x0 + _bcast(self.sigma(t), x0) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the net's raw output is regressed onto (MSE, uniform weight)."""
        raise NotImplementedError

    def predict(self, raw: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw net output → ``(x0, ε)``."""
        raise NotImplementedError

    def denoiser(self, net: nn.Module, autocast: bool = False) -> "Denoiser":
        return Denoiser(net, self, autocast)

    def describe(self) -> str:
        return self.name


class FlowProcess(Process):
    """Linear interpolant ``x_t = (1 − t)·x0 + t·ε`` with velocity target ``ε − x0`` (SiT)."""

    name = "flow"
    t_max = 1.0

    def __init__(self, time_sampling: str = "uniform"):
        if time_sampling not in ("uniform", "logit-normal"):
            raise DiffrepError(f"unknown time sampling {time_sampling!r} for flow: choose uniform or logit-normal")
        self.time_sampling = time_sampling

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def sample_time(self, n, generator=None):
        if self.time_sampling == "logit-normal":  # SD3, arXiv 2403.03206 §3.1, m=0, s=1
            return torch.sigmoid(torch.randn(n, generator=generator))
        return torch.rand(n, generator=generator)

    def target(self, x0, noise, t):
        return noise - x0

    def predict(self, raw, xt, t):
        tb = _bcast(t, xt)
        return xt - tb * raw, xt + (1.0 - tb) * raw

    def describe(self):
        return f"flow ({self.time_sampling} t, velocity prediction)"


class VPProcess(Process):
    """Variance-preserving diffusion, ``α² + σ² = 1``, in continuous time ``t ∈ [0, 1]``.

    ``linear``: β(t) = β_min + t(β_max − β_min) with β ∈ [0.1, 20] — DDPM's 1000-step
    schedule in the continuum (arXiv 2011.13456, eq. 33).  ``cosine``: ᾱ(t) =
    cos²(π/2·(t+s)/(1+s)) / cos²(π/2·s/(1+s)), s = 0.008 (arXiv 2102.09672, eq. 17),
    with ᾱ kept ≥ the linear schedule's final value (4.3e-5) so ε → x0 stays finite at t = 1.
    The net sees ``1000·t``, DDPM's integer step.
    """

    name = "vp"
    t_max = 1.0
    beta_min, beta_max, cosine_s = 0.1, 20.0, 0.008
    min_alpha_bar = math.exp(-(0.1 + 0.5 * (20.0 - 0.1)))

    def __init__(self, schedule: str = "linear", prediction: str = "eps", t_min: float = 1e-3):
        if schedule not in ("linear", "cosine"):
            raise DiffrepError(f"unknown VP schedule {schedule!r}: choose linear or cosine")
        if prediction not in ("eps", "v"):
            raise DiffrepError(f"unknown VP prediction {prediction!r}: choose eps or v")
        self.schedule, self.prediction, self.t_min = schedule, prediction, t_min

    def _alpha_bar(self, t):
        if self.schedule == "linear":
            return torch.exp(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))
        s = self.cosine_s
        f = torch.cos(0.5 * math.pi * (t + s) / (1 + s)) ** 2 / math.cos(0.5 * math.pi * s / (1 + s)) ** 2
        return f.clamp(min=self.min_alpha_bar)

    def alpha(self, t):
        return self._alpha_bar(t).sqrt()

    def sigma(self, t):
        return (1.0 - self._alpha_bar(t)).clamp(min=0).sqrt()

    def d_alpha(self, t):
        if self.schedule == "linear":
            return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min)) * self.alpha(t)
        s = self.cosine_s
        phi = 0.5 * math.pi * (t + s) / (1 + s)
        d = -torch.sin(phi) * (0.5 * math.pi / (1 + s)) / math.cos(0.5 * math.pi * s / (1 + s))
        return torch.where(self._alpha_bar(t) > self.min_alpha_bar, d, torch.zeros_like(d))

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def sample_time(self, n, generator=None):
        return self.t_min + (1.0 - self.t_min) * torch.rand(n, generator=generator)

    def target(self, x0, noise, t):
        if self.prediction == "eps":
            return noise
        return _bcast(self.alpha(t), x0) * noise - _bcast(self.sigma(t), x0) * x0

    def predict(self, raw, xt, t):
        a, s = _bcast(self.alpha(t), xt), _bcast(self.sigma(t), xt)
        if self.prediction == "eps":
            return (xt - s * raw) / a, raw
        return a * xt - s * raw, s * xt + a * raw

    def describe(self):
        return f"vp ({self.schedule} schedule, {self.prediction}-prediction)"


class EDMProcess(Process):
    """EDM: ``x_σ = x0 + σ·ε``; ``D = c_skip·x + c_out·F(c_in·x, c_noise)`` (arXiv 2206.00364, Table 1).

    Training: ln σ ~ N(P_mean = −1.2, P_std = 1.2) and loss weight λ(σ) = 1/c_out², which
    makes the loss on F a plain MSE.  Sampling: ρ = 7 grid on [σ_min, σ_max] = [0.002, 80].
    The net sees ``250·ln σ`` (EDM's c_noise = ¼ ln σ, scaled ×1000).
    """

    name = "edm"

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.sigma_min, self.t_max, self.rho = sigma_min, sigma_max, rho
        self.t_min = sigma_min

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def sample_time(self, n, generator=None):
        return torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator))

    def time_grid(self, steps, rho=None):
        """EDM's grid (eq. 5): σ from σ_max to σ_min spaced evenly in σ^(1/ρ), then 0."""
        rho = self.rho if rho is None else rho
        i = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        hi, lo = self.t_max ** (1 / rho), self.sigma_min ** (1 / rho)
        return torch.cat([(hi + i * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])

    def net_time(self, t):
        return 250.0 * torch.log(t.clamp(min=1e-20))

    def less_noisy(self, t, gap):
        """The gap is taken in ``τ = σ/(1 + σ)``, the flow-matching time with the same signal-to-noise
        ratio (σ in [0.002, 80] is no fraction of a range), then mapped back: ``σ' = τ'/(1 − τ')``."""
        tau = (t.double() / (1 + t.double()) - gap).clamp_min(self.t_min / (1 + self.t_min))
        return torch.minimum((tau / (1 - tau)).to(t.dtype), t).clamp_min(self.t_min)    # exact at gap 0

    def _c(self, t, x):
        s, sd = _bcast(t, x), self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        return c_skip, c_out

    def net_input_scale(self, t):
        return 1.0 / (t**2 + self.sigma_data**2).sqrt()

    def target(self, x0, noise, t):
        xt = self.corrupt(x0, t, noise)
        c_skip, c_out = self._c(t, x0)
        return (x0 - c_skip * xt) / c_out

    def predict(self, raw, xt, t):
        c_skip, c_out = self._c(t, xt)
        x0 = c_skip * xt + c_out * raw
        return x0, (xt - x0) / _bcast(t, xt)

    def describe(self):
        return f"edm (σ_data={self.sigma_data}, ln σ ~ N({self.p_mean}, {self.p_std}²))"


class Denoiser:
    """``D(x_t, t, cond) -> Prediction`` for a net trained with ``process``.

    ``t`` may be a Python float or a tensor of shape ``B``; the net runs in bf16 autocast
    when ``autocast`` is set and its outputs are returned in float32.  ``image`` is the conditioning image of a
    DiffuseVAE net (:func:`diffrep.nets.common.join_image`), passed as it is (it is clean: no input scaling);
    ``inputs`` are the net's other keyword inputs (a guidance-distilled student's ``guidance_scale``).
    """

    def __init__(self, net: nn.Module, process: Process, autocast: bool = False):
        self.net, self.process, self.autocast = net, process, autocast

    def _net(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, taps: tuple[str, ...],
             image: torch.Tensor | None = None, **kw):
        x_in = x * _bcast(self.process.net_input_scale(t), x)
        if image is not None:
            kw["image"] = image
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.net(x_in, self.process.net_time(t).float(), cond, taps=taps, **kw)

    def raw(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, taps: tuple[str, ...] = (),
            image: torch.Tensor | None = None, **inputs):
        """The net's raw output (and tapped hidden states) at ``(x_t, t)``."""
        out, hidden = self._net(x, t, cond, taps, image, **inputs)
        return out.float(), hidden

    def hidden(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, taps: tuple[str, ...],
               image: torch.Tensor | None = None) -> dict:
        """Only the tapped hidden states at ``(x_t, t)``: the net stops after the deepest tap."""
        return self._net(x, t, cond, taps, image, taps_only=True)[1]

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None,
                 taps: tuple[str, ...] = (), image: torch.Tensor | None = None, **inputs) -> Prediction:
        if isinstance(t, torch.Tensor):
            t = t.to(x.device, torch.float32).expand(x.shape[0])
        else:  # a filled tensor, not a host-to-device copy (which would make the host wait for the GPU)
            t = torch.full((x.shape[0],), float(t), device=x.device)
        raw, hidden = self.raw(x, t, cond, taps, image, **inputs)
        x0, eps = self.process.predict(raw, x, t)
        return Prediction(x0, eps, hidden)


class ImageBound:
    """A denoiser with a DiffuseVAE net's conditioning images bound: what samplers and guidance call.  A batch that is
    a multiple of the images (classifier-free guidance's doubled batch) sees them repeated."""

    def __init__(self, denoiser: Denoiser, image: torch.Tensor):
        self.denoiser, self.image, self.process = denoiser, image, denoiser.process

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None,
                 taps: tuple[str, ...] = (), **inputs) -> Prediction:
        image = self.image if len(x) == len(self.image) else self.image.repeat(len(x) // len(self.image), 1, 1, 1)
        return self.denoiser(x, t, cond, taps, image, **inputs)


PROCESSES = ("flow", "vp", "edm")


def make_process(name: str, prediction: str | None = None, schedule: str | None = None,
                 time_sampling: str | None = None) -> Process:
    """Build a process by name; ``prediction``/``schedule`` apply to ``vp``, ``time_sampling`` to ``flow``."""
    if name == "flow":
        return FlowProcess(time_sampling or "uniform")
    if name == "vp":
        return VPProcess(schedule or "linear", prediction or "eps")
    if name == "edm":
        return EDMProcess()
    raise DiffrepError(f"unknown process {name!r}: choose one of {', '.join(PROCESSES)}")
