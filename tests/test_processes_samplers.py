"""Processes and samplers, checked against the exact denoiser of Gaussian data.

For data x0 ~ N(m, s²) and x_t = α·x0 + σ·ε the posterior mean is known in closed form,
so every sampler's output distribution can be compared with the data's.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffrep.guidance import ClassifierFreeGuidance
from diffrep.processes import EDMProcess, FlowProcess, Prediction, VPProcess, make_process
from diffrep.samplers import SAMPLERS, get_sampler, initial_noise, network_evaluations

PROCESSES = {"flow": FlowProcess(), "vp-eps": VPProcess("linear", "eps"), "vp-v-cosine": VPProcess("cosine", "v"),
             "edm": EDMProcess()}
M, S = 0.5, 0.3


class GaussianDenoiser:
    """The exact ``E[x0 | x_t]`` for x0 ~ N(M, S²), counting its calls."""

    def __init__(self, process):
        self.process, self.calls = process, 0

    def __call__(self, x, t, cond=None, taps=()):
        self.calls += 1
        t = torch.as_tensor(t, dtype=torch.float64).reshape(1)
        a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
        x0 = M + a * S**2 / (a**2 * S**2 + s**2) * (x - a * M)
        return Prediction(x0, (x - a * x0) / s)


def draw(process, sampler, steps, n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = process.time_grid(steps)
    x = initial_noise(process, (n, 1), ts[0], g).double()
    denoiser = GaussianDenoiser(process)
    out = get_sampler(sampler)(denoiser, x, ts, generator=g)
    return out, denoiser.calls


@pytest.mark.parametrize("name", list(PROCESSES))
def test_predict_inverts_target(name):
    p = PROCESSES[name]
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    t = p.sample_time(8, g).clamp(max=0.999 * p.t_max)
    xt = p.corrupt(x0, t, noise)
    x0_hat, eps_hat = p.predict(p.target(x0, noise, t), xt, t)
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, noise, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["flow", "vp-eps", "vp-v-cosine"])
def test_schedule_derivatives(name):
    p = PROCESSES[name]
    t, h = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64), 1e-6
    torch.testing.assert_close(p.d_alpha(t), (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.d_sigma(t), (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("process", [FlowProcess(), VPProcess(), EDMProcess()], ids=lambda p: p.name)
def test_less_noisy_times_stay_in_the_trained_range(process):
    """SRA's teacher time: at most ``gap`` of the noise range cleaner, never below ``t_min`` (under EDM
    a gap in raw σ, whose range is 80, would send almost every teacher to σ = 0)."""
    g = torch.Generator().manual_seed(0)
    t = process.sample_time(10_000, g)
    gap = 0.2 * torch.rand(10_000, generator=g)
    cleaner = process.less_noisy(t, gap)
    assert (cleaner <= t.clamp_min(process.t_min)).all() and (cleaner >= process.t_min).all()
    assert (cleaner > process.t_min).float().mean() > 0.6
    if process.name == "flow":
        assert torch.equal(cleaner, (t - gap).clamp_min(0))


def test_time_grids_are_float64_and_end_at_zero():
    for p in PROCESSES.values():
        ts = p.time_grid(10)
        assert ts.dtype == torch.float64 and len(ts) == 11 and ts[-1] == 0 and ts[0] == p.t_max
        assert (ts[1:] < ts[:-1]).all()
    edm = EDMProcess().time_grid(18)
    assert math.isclose(float(edm[-2]), 0.002, rel_tol=1e-9)


CONTRACT_STEPS = {"euler": 100, "heun": 40, "ddim": 100, "dpmpp_2m": 30, "ddpm": 200, "euler_maruyama": 250}
"""Steps at which each sampler must reach the data distribution; a sampler registered without a row fails."""


@pytest.mark.parametrize("process", list(PROCESSES))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_samplers_reach_the_data_distribution(process, sampler):
    steps = CONTRACT_STEPS[sampler]
    out, calls = draw(PROCESSES[process], sampler, steps)
    assert calls == network_evaluations(sampler, steps)
    assert abs(float(out.mean()) - M) < 0.02
    assert abs(float(out.std()) - S) < 0.03 * S + 0.01, f"std {float(out.std()):.4f} vs {S}"


def test_dpmpp_2m_beats_euler_at_few_steps():
    """A 2nd-order multistep solver is closer to the exact ODE solution than Euler at 10 steps."""
    p = FlowProcess()
    exact, _ = draw(p, "dpmpp_2m", 1000, n=2000)
    err = {s: float((draw(p, s, 10, n=2000)[0] - exact).abs().mean()) for s in ("euler", "dpmpp_2m", "heun")}
    assert err["dpmpp_2m"] < 0.5 * err["euler"], err
    assert err["heun"] < 0.5 * err["euler"], err


def test_samplers_are_reproducible_with_a_generator():
    p = FlowProcess()
    for sampler in SAMPLERS:
        a, _ = draw(p, sampler, 5, n=16, seed=3)
        b, _ = draw(p, sampler, 5, n=16, seed=3)
        assert torch.equal(a, b), sampler


def test_make_process_rejects_unknown():
    from diffrep.errors import DiffrepError

    with pytest.raises(DiffrepError, match="flow, vp, edm"):
        make_process("ddpm++")
    with pytest.raises(DiffrepError, match="eps or v"):
        make_process("vp", prediction="x0")


class LabelEcho:
    """A denoiser whose x0 is the label (NULL_LABEL → −1), to read off what guidance mixes."""

    process = FlowProcess()

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond=None, taps=()):
        self.batches.append(x.shape[0])
        x0 = cond.float().view(-1, 1).expand_as(x)
        return Prediction(x0, x0)


def test_cfg_applies_only_inside_the_interval():
    inner = LabelEcho()
    guided = ClassifierFreeGuidance(inner, scale=3.0, interval=(0.2, 0.6))
    x, cond = torch.zeros(4, 1), torch.full((4,), 2)
    inside = guided(x, 0.4, cond)
    assert inner.batches == [8], "both branches run in one batched forward"
    assert torch.allclose(inside.x0, torch.full((4, 1), -1 + 3.0 * (2 - (-1))))
    outside = guided(x, 0.9, cond)
    assert inner.batches == [8, 4] and torch.allclose(outside.x0, torch.full((4, 1), 2.0))


def test_rho_grid_puts_steps_at_low_noise():
    ts = FlowProcess().time_grid(50, rho=2.0)
    assert ts[0] == 1 and ts[-1] == 0 and float(ts[-2]) == pytest.approx(1 / 2500)
    torch.testing.assert_close(FlowProcess().time_grid(50), torch.linspace(1, 0, 51, dtype=torch.float64))
    p = FlowProcess()
    exact, _ = draw(p, "dpmpp_2m", 1000, n=2000)
    g = torch.Generator().manual_seed(0)
    x = initial_noise(p, (2000, 1), 1.0, g).double()
    on_rho_grid = get_sampler("euler")(GaussianDenoiser(p), x, p.time_grid(100, rho=2.0))
    assert float((on_rho_grid - exact).abs().mean()) < 0.01


def test_cfg_guides_a_grid_point_on_the_interval_end():
    """t = 0.6 of a 10-step float64 grid rounds above 0.6 in float32: the interval is tested on the float64 value."""
    ts = FlowProcess().time_grid(10)
    end = float(ts[4])
    assert float(torch.tensor(end, dtype=torch.float32)) > 0.6 >= end
    inner = LabelEcho()
    ClassifierFreeGuidance(inner, scale=3.0, interval=(0.2, 0.6))(torch.zeros(2, 1), end, torch.full((2,), 1))
    assert inner.batches == [4]


def test_cfg_takes_a_time_per_sample():
    inner = LabelEcho()
    guided = ClassifierFreeGuidance(inner, scale=3.0, interval=(0.2, 0.6))
    t = torch.tensor([0.4, 0.9, 0.2, 0.61])
    out = guided(torch.zeros(4, 1), t, torch.full((4,), 2))
    assert inner.batches == [8]
    torch.testing.assert_close(out.x0.flatten(), torch.tensor([8.0, 2.0, 8.0, 2.0]))


def test_grid_coefficients_are_the_processes_own_at_every_time():
    from diffrep.samplers import grid_coefficients

    for p in PROCESSES.values():
        ts = p.time_grid(7)
        c = grid_coefficients(p, ts)
        for i, t in enumerate(ts):
            one = t.reshape(1)
            assert c.alpha[i] == pytest.approx(float(p.alpha(one)), rel=1e-15, abs=1e-300)
            assert c.sigma[i] == pytest.approx(float(p.sigma(one)), rel=1e-15, abs=1e-300)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "dpmpp_2m"])
def test_samplers_let_gradients_through(sampler):
    """Samplers never switch gradients off: DPS and classifier guidance differentiate through them."""
    p = FlowProcess()
    x = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    out = get_sampler(sampler)(GaussianDenoiser(p), x, p.time_grid(4))
    out.sum().backward()
    assert x.grad is not None and torch.all(x.grad != 0)
