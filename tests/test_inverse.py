"""Inverse problems: operators against independent references, solvers against an exact Gaussian posterior for
every process, and the restore command's outputs and errors."""

from __future__ import annotations

import math
import re

import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffrep.errors import DiffrepError
from diffrep.inverse import Prior, get_solver, make_operator, task_options
from diffrep.inverse.operators import Operator
from diffrep.inverse.solvers import SOLVERS
from diffrep.processes import Prediction, make_process

SHAPE = (1, 28, 28)


def _op(task: str, shape=SHAPE, n: int = 3, **opts):
    return make_operator(task, shape, n, task_options(task, {k: str(v) for k, v in opts.items()}), seed=0)


REFERENCES = {
    "sr4": lambda x: F.avg_pool2d(x, 4),
    "sr2": lambda x: F.avg_pool2d(x, 2),
    "deblur-gauss": lambda x: kornia.filters.gaussian_blur2d(x, (11, 11), (1.5, 1.5), border_type="reflect"),
    "denoise": lambda x: x,
    "inpaint-box": lambda x: x * F.pad(torch.zeros(16, 16), (6, 6, 6, 6), value=1.0),
}


@pytest.mark.parametrize("task", ["sr4", "sr2", "deblur-gauss", "denoise", "inpaint-box", "inpaint-random",
                                  "deblur-motion"])
def test_operators_match_references_and_their_adjoints(task):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *SHAPE, generator=g)
    op = _op(task)
    y = op(x)
    if task in REFERENCES:
        torch.testing.assert_close(y, REFERENCES[task](x), atol=1e-5, rtol=0)
    r = torch.randn(y.shape, generator=g)
    assert (y * r).sum().item() == pytest.approx((x * op.adjoint(r)).sum().item(), rel=1e-4)   # <Ax, r> = <x, Aᵀr>
    # A A⁺ y = y, up to conjugate gradients' tolerance (motion) and the singular values A⁺ drops (Gaussian blur)
    tolerance = {"deblur-motion": 1e-2, "deblur-gauss": 0.1}.get(task, 1e-4)
    torch.testing.assert_close(op(op.pinv(y)), y, atol=tolerance, rtol=0)
    if op.has_svd:   # the SVD's adjoint and pseudo-inverse agree with the generic (autograd, conjugate-gradient) ones
        torch.testing.assert_close(op.adjoint(r), Operator.adjoint(op, r), atol=1e-4, rtol=0)


def test_bicubic_super_resolution_and_colorize_match_torch():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sr = _op("sr4", shape=(3, 16, 16), mode="bicubic")
    torch.testing.assert_close(sr(x), F.interpolate(x, size=(4, 4), mode="bicubic", antialias=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(_op("colorize", shape=(3, 16, 16))(x), x.mean(1, keepdim=True), atol=1e-6, rtol=0)


def test_masks_are_seeded_per_image_and_have_the_asked_fraction():
    a, b = _op("inpaint-random", n=50, fraction=0.7), _op("inpaint-random", n=50, fraction=0.7)
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask[0], a.mask[1])
    assert 1 - a.mask.mean().item() == pytest.approx(0.7, abs=0.02)
    assert torch.equal(a.take(torch.tensor([3, 3])).mask[1], a.mask[3])


@pytest.mark.parametrize("task, opts, message", [
    ("colorize", {}, "colorize needs RGB data"),
    ("sr4", {"factor": 3}, "must be ≥ 2 and divide the image size 28×28"),
    ("inpaint-random", {"fraction": 1.2}, "must lie in \\(0, 1\\)"),
    ("inpaint-box", {"size": 40}, "the box must be 1…27 pixels"),
    ("deblur-gauss", {"sigma": 6.0}, "no larger than the image"),
    ("deblur-motion", {"size": 31}, "no larger than the image"),
])
def test_task_options_out_of_range_are_one_line_errors(task, opts, message):
    with pytest.raises(DiffrepError, match=message):
        _op(task, **opts)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(DiffrepError, match="unknown task 'inpaint': choose one of denoise, inpaint-box"):
        task_options("inpaint", {})
    with pytest.raises(DiffrepError, match="unknown solver 'ddim': choose one of reddiff, dps"):
        get_solver("ddim")
    with pytest.raises(DiffrepError, match="sr4 has no option 'scale' \\(its options: factor, mode\\)"):
        task_options("sr4", {"scale": "2"})
    with pytest.raises(DiffrepError, match="ddrm has no option 'zeta'"):
        get_solver("ddrm", {"zeta": "1"})


class GaussianDenoiser:
    """The exact denoiser of data ``x0 ~ N(0, I)`` under ``process``: ``x̂0 = x_ve/(1 + s²)``."""

    def __init__(self, process):
        self.process = process

    def __call__(self, x, t, cond=None, taps=()):
        t64 = torch.tensor([float(t)], dtype=torch.float64)
        a, s = float(self.process.alpha(t64)), float(self.process.sigma(t64))
        x0 = (x / a) / (1 + (s / a) ** 2)
        return Prediction(x0, (x - a * x0) / s)


def _gaussian_problem(sigma_y: float = 0.05):
    op = _op("inpaint-random", shape=(1, 8, 8), n=200, fraction=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 1, 8, 8, generator=g)
    y = op(x) + sigma_y * torch.randn(x.shape, generator=g)
    seen = op.mask.expand_as(x) > 0
    mean = torch.where(seen, y / (1 + sigma_y**2), torch.zeros_like(x))        # the exact posterior
    std = torch.where(seen, torch.full_like(x, math.sqrt(sigma_y**2 / (1 + sigma_y**2))), torch.ones_like(x))
    return op, y, seen, mean, std


POSTERIOR_Z_STD = {   # solver: (z-score std on measured pixels, on unmeasured pixels) — what each method achieves
    "pigdm": ((0.85, 1.1), (0.85, 1.1)),   # its Gaussian p(y | x_t) is exact for N(0, I) data
    "daps": ((0.85, 1.15), (0.8, 1.05)),
    "dps": ((0.0, 2.0), (0.85, 1.1)),      # an approximate likelihood: measured pixels within 2× the spread
    "ddrm": ((0.3, 0.8), (0.6, 0.95)),     # η = 0.85 on 20 steps under-disperses
    "reddiff": ((0.0, 0.7), (0.0, 0.7)),   # a mean-seeking variational fit, not a sampler
}


@pytest.mark.parametrize("name", list(POSTERIOR_Z_STD))
def test_solvers_sample_the_exact_gaussian_posterior_for_every_process(name):
    op, y, seen, mean, std = _gaussian_problem()
    results = []
    for process in ("flow", "vp", "edm"):
        prior = Prior(GaussianDenoiser(make_process(process)))
        # EDM's σ stops at 80, DAPS's default starts at 100; N(0, I) data are not in [-1, 1], ΠGDM's clamp assumes it
        options = {"daps": {"s_max": "80"}, "pigdm": {"max_correction": "0"}}.get(name, {})
        x = get_solver(name, options).solve(prior, op, y, 0.05, torch.Generator().manual_seed(0))
        z = (x - mean) / std
        (lo_s, hi_s), (lo_u, hi_u) = POSTERIOR_Z_STD[name]
        assert abs(z[seen].mean()) < 0.05 and abs(z[~seen].mean()) < 0.05, (process, z[seen].mean(), z[~seen].mean())
        assert lo_s < z[seen].std() < hi_s and lo_u < z[~seen].std() < hi_u, (process, z[seen].std(), z[~seen].std())
        results.append(x)
    # one noise-level grid in s = σ/α serves every process: the same numbers up to float rounding
    torch.testing.assert_close(results[0], results[1], atol=2e-3, rtol=0)
    torch.testing.assert_close(results[0], results[2], atol=2e-3, rtol=0)


class EpsErrorDenoiser(GaussianDenoiser):
    """Data ``N(0, 0.3²I)`` (inside [-1, 1]) seen through an ε-net with the error ``ε̂ = ε − 0.3·x_t``: its
    x̂0 follows x with slope 0.3·σ instead of ≈ 0 at high noise, as the trained VP ε-net's does (≈ 0.3 at s = 80)."""

    def __call__(self, x, t, cond=None, taps=()):
        t64 = torch.tensor([float(t)], dtype=torch.float64)
        a, s = float(self.process.alpha(t64)), float(self.process.sigma(t64))
        x0 = (x / a) * 0.09 / (0.09 + (s / a) ** 2)
        eps = (x - a * x0) / s - 0.3 * x
        return Prediction((x - s * eps) / a, eps)


def test_pigdm_clamps_its_correction_so_an_eps_nets_jacobian_error_cannot_blow_up():
    op, *_ = _gaussian_problem()
    truth = 0.3 * torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = op(truth) + 0.05 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(3))
    prior = Prior(EpsErrorDenoiser(make_process("vp")))
    free = get_solver("pigdm", {"max_correction": "0"}).solve(prior, op, y, 0.05, torch.Generator().manual_seed(0))
    clamped = get_solver("pigdm").solve(prior, op, y, 0.05, torch.Generator().manual_seed(0))
    assert not torch.isfinite(free).all() or free.abs().max() > 1e3      # the failure the clamp prevents
    seen = op.mask.expand_as(truth) > 0
    # bounded, and near the measurements (this toy net's error persists at every level, so not as near as an exact net)
    assert torch.isfinite(clamped).all() and clamped.abs().max() < 10 and (clamped - truth)[seen].std() < 0.25


def test_dps_batch_norm_couples_images_and_the_per_sample_norm_does_not():
    op, y, *_ = _gaussian_problem()
    prior = Prior(GaussianDenoiser(make_process("flow")))
    other = y.clone()
    other[1:] *= 3.0        # the neighbours' residuals change; image 0's measurement does not
    first = {}
    for norm in ("sample", "batch"):
        solver = get_solver("dps", {"norm": norm, "steps": 50})
        a = solver.solve(prior, op, y, 0.05, torch.Generator().manual_seed(0))[0]
        b = solver.solve(prior, op, other, 0.05, torch.Generator().manual_seed(0))[0]
        first[norm] = (a - b).abs().max().item()
    assert first["sample"] < 1e-5 < 1e-2 < first["batch"], first


def test_solvers_that_need_an_svd_refuse_motion_blur():
    from diffrep.inverse.restore import check_solver_fits

    for name in ("ddrm", "pigdm"):
        with pytest.raises(DiffrepError, match=f"{name} needs an operator with an SVD, and deblur-motion has none"):
            check_solver_fits(get_solver(name), name, _op("deblur-motion"), 0.05)


def test_every_solver_is_registered_and_reports_its_true_nfe():
    op, y, *_ = _gaussian_problem()
    small = {"reddiff": {"steps": "7"}, "dps": {"steps": "6"}, "pigdm": {"steps": "5"}, "ddrm": {"steps": "4"},
             "daps": {"anneal_steps": "3", "ode_steps": "2", "langevin_steps": "2"}, "pinv": {}, "tv": {"steps": "2"}}
    for name, cls in SOLVERS.items():
        solver = get_solver(name, small[name])
        calls = []
        prior = Prior(GaussianDenoiser(make_process("vp")), on_call=lambda: calls.append(1))
        solver.solve(prior, op, y, 0.05, torch.Generator().manual_seed(0))
        assert isinstance(solver, cls) and cls.__doc__ and solver.nfe() == len(calls), (name, solver.nfe(), len(calls))
    assert get_solver("reddiff", {"steps": "30"}).nfe() == 30
    with pytest.raises(DiffrepError, match="must be at least 1"):
        get_solver("reddiff", {"steps": "0"})


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Three seconds-long runs on 8×8 digits, one per process."""
    from diffrep.cli import main

    root = tmp_path_factory.mktemp("runs")
    for process in ("flow", "vp", "edm"):
        assert main(["train", "--preset", "smoke", "--process", process, "--out", str(root / process),
                     "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("solver", ["reddiff", "dps", "pigdm", "ddrm", "daps"])
def test_every_diffusion_solver_restores_with_flow_vp_and_edm_runs(tiny_runs, solver):
    from diffrep.inverse import restore_run

    fast = {"reddiff": {"steps": "5"}, "dps": {"steps": "5"}, "pigdm": {"steps": "5"}, "ddrm": {"steps": "5"},
            "daps": {"anneal_steps": "3", "ode_steps": "2", "langevin_steps": "5"}}[solver]
    for process in ("flow", "vp", "edm"):
        m = restore_run(tiny_runs / process, "inpaint-box", solver, data="digits:test", n=4, samples=2,
                        task_opts={"size": "4"}, solver_opts=fast, progress=False)
        assert math.isfinite(m["psnr"]) and 0 <= m["coverage"]["interval"] <= 1 and m["nfe"] > 0
        assert 0 <= m["accuracy"] <= 1 and m["fd_ref"] > 0, (process, m)


def test_restore_command_writes_everything_and_refuses_to_overwrite(tiny_runs, tmp_path, cli):
    out, grid = tmp_path / "r.npz", tmp_path / "r.png"
    args = ["restore", tiny_runs / "flow", "--task", "sr2", "--solver", "ddrm", "--data", "digits:test", "--n", "6",
            "--samples", "3", "--solver-opt", "steps=4", "--out", out, "--grid", grid, "--no-progress"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "ddrm on sr2 (6 inputs × 3 draws" in stdout and "coverage of the 90% interval" in stdout
    with np.load(out) as z:
        assert z["restorations"].shape == (6, 3, 8, 8, 1) and z["arr_0"].shape == (6, 8, 8, 1)
        assert z["truth"].shape == (6, 8, 8, 1) and z["measurement"].shape == (6, 1, 4, 4)
        assert z["operator_factor_h"].shape == (4, 8)
        assert '"solver": "ddrm"' in str(z["metrics"])
    assert grid.stat().st_size > 0
    before = out.read_bytes()
    code, _, err = cli(*args)
    assert code == 2 and "r.npz exists: pass --overwrite" in err and out.read_bytes() == before
    code, stdout, err = cli("eval", out, f"{out}:truth", "--metrics", "psnr,ssim", "--no-progress")
    assert code == 0 and "psnr" in stdout and "ssim" in stdout, err


@pytest.mark.parametrize("args, message", [
    (["--task", "colorize", "--solver", "ddrm"], "colorize needs RGB data"),
    (["--task", "deblur-motion", "--task-opt", "size=5", "--solver", "pigdm"], "pigdm needs an operator with an SVD"),
    (["--task", "denoise", "--solver", "ddrm", "--data", "mnist5k:test"], "mnist5k:test images are \\(1, 32, 32\\)"),
    (["--task", "denoise", "--solver", "reddiff", "--task-opt", "size"], "expected KEY=VALUE"),
    (["--task", "denoise", "--solver", "daps", "--sigma-y", "0"], "daps needs measurement noise"),
])
def test_restore_bad_input_is_one_line(tiny_runs, cli, args, message):
    code, _, err = cli("restore", tiny_runs / "flow", "--data", "digits:test", "--n", "2", "--no-progress",
                       "--solver-opt", "steps=1" if "daps" not in args else "anneal_steps=1", *args)
    assert code == 2 and err.strip().count("\n") == 0 and re.search(message, err), err


def test_samples_zero_is_refused_by_the_parser(tiny_runs, cli):
    with pytest.raises(SystemExit):
        cli("restore", tiny_runs / "flow", "--task", "denoise", "--solver", "pinv", "--samples", "0")


def test_dpm_encoder_code_decodes_back_to_the_image_and_translates(tiny_runs, cli, tmp_path):
    from diffrep.inverse.translate import translate_run

    m = translate_run(tiny_runs / "flow", tiny_runs / "vp", data="digits:test", n=6, source_labels="true",
                      target_labels="shift:1", s_start=5.0, steps=6, progress=False)
    assert m["reconstruction_psnr"] > 40 and 0 <= m["target_class_accuracy"] <= 1 and m["fd_ref"] > 0   # exact inverse
    code, out, err = cli("translate", tiny_runs / "flow", tiny_runs / "edm", "--data", "digits:test", "--n", "4",
                         "--steps", "3", "--target-labels", "11", "--no-progress")
    assert code == 2 and "class index 0…9" in err


def test_translation_from_other_data_is_judged_on_the_target_runs_data(tiny_runs, tmp_path):
    from diffrep.data import load_builtin
    from diffrep.inverse.translate import translate_run

    test = load_builtin("digits", "test")
    np.savez(tmp_path / "other.npz", arr_0=test.images.permute(0, 2, 3, 1).numpy())   # unlabelled, not built in
    m = translate_run(tiny_runs / "flow", tiny_runs / "vp", data=str(tmp_path / "other.npz"), n=6,
                      source_labels="none", target_labels="3", s_start=5.0, steps=4, progress=False)
    assert m["judged_on"] == "digits" and m["fd_ref"] > 0 and 0 <= m["target_class_accuracy"] <= 1
    assert "source_class_kept" not in m


def test_translation_labels():
    from diffrep.inverse.translate import translation_labels

    labels = torch.tensor([0, 4, 9])
    assert translation_labels("none", labels, 3, 10) is None
    assert translation_labels("shift:1", labels, 3, 10).tolist() == [1, 5, 0]
    assert translation_labels("7", labels, 3, 10).tolist() == [7, 7, 7]
    with pytest.raises(DiffrepError, match="expected shift:K"):
        translation_labels("shift:x", labels, 3, 10)
    with pytest.raises(DiffrepError, match="the run is unconditional"):
        translation_labels("true", labels, 3, 0)


def test_conditioning_mismatches_are_refused():
    from types import SimpleNamespace

    from diffrep.inverse.run import condition

    labels, no_dropout = torch.tensor([1, 2]), SimpleNamespace(label_dropout=0.0)
    with pytest.raises(DiffrepError, match="never saw the null class \\(--label-dropout 0\\).*pass --labels true"):
        condition("none", labels, {"num_classes": 10}, no_dropout)
    with pytest.raises(DiffrepError, match="--labels true: the run is unconditional"):
        condition("true", labels, {"num_classes": 0}, no_dropout)
    assert condition("none", labels, {"num_classes": 0}, no_dropout) is None
    assert torch.equal(condition("true", labels, {"num_classes": 10}, no_dropout), labels)
