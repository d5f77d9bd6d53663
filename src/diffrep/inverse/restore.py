"""Restore images with a trained run as the prior: measure, solve ``K`` times per input, score.

:func:`measure` draws ``y = A x + σ_y·n`` (seeded); :func:`solve_all` runs a solver over chunks of
inputs with the ``K`` posterior draws of each input side by side in one batch; :func:`score` computes
fidelity, calibration, the reference encoder's judgement and cost.  ``diffrep restore`` (and
:func:`restore_run`) chains them and writes an ``.npz`` with everything needed to check the numbers.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from tqdm import tqdm

from diffrep.data import to_model_range, to_uint8
from diffrep.errors import DiffrepError
from diffrep.evaluation import restoration
from diffrep.inverse.operators import Operator
from diffrep.inverse.prior import Prior
from diffrep.inverse.solvers.noise import RowGenerators
from diffrep.rng import keyed_generator

MEASUREMENT_KEY = 1 << 30
"""Seed key of the measurement noise, apart from the solvers' chunk keys."""


def measure(op: Operator, images: torch.Tensor, sigma_y: float, seed: int = 0) -> torch.Tensor:
    """``y = A x + σ_y·n`` for ``uint8`` images (``x`` in [-1, 1]); ``n`` drawn from ``seed``."""
    y = op(to_model_range(images))
    return y + sigma_y * torch.randn(y.shape, generator=keyed_generator(seed, MEASUREMENT_KEY))


def solve_all(solver, denoiser, op: Operator, y: torch.Tensor, sigma_y: float, *, samples: int = 1, seed: int = 0,
              batch_size: int = 100, labels: torch.Tensor | None = None, device: torch.device | str = "cpu",
              progress: bool = True) -> tuple[torch.Tensor, float]:
    """``N×K×C×H×W`` restorations in [-1, 1] and the seconds they took.

    A chunk holds ``batch_size`` inputs, each repeated ``K`` times; draw ``k`` of input ``i`` takes its noise
    from its own generator, seeded by ``(seed, i, k)``, so it does not depend on the batch size (up to
    floating-point rounding, and except for DPS's batch-wide norm).  ``labels`` condition the prior
    (``None``: the unconditional prior, the null class of a class-conditional net).
    """
    n, out = y.shape[0], []
    chunks = -(-n // batch_size)
    bar = tqdm(total=solver.nfe() * chunks, desc="restore", unit="net call", disable=not progress or not solver.nfe())
    start = time.perf_counter()
    for j in range(chunks):
        index = torch.arange(j * batch_size, min(n, (j + 1) * batch_size)).repeat_interleave(samples)
        cond = None if labels is None else labels[index].to(device)
        prior = None if denoiser is None else Prior(denoiser, cond, on_call=bar.update)
        draws = RowGenerators([keyed_generator(seed, int(i), pos % samples) for pos, i in enumerate(index.tolist())])
        x = solver.solve(prior, op.take(index), y[index].to(device), sigma_y, draws)
        out.append(x.detach().clamp(-1, 1).cpu().reshape(-1, samples, *x.shape[1:]))
    bar.close()
    return torch.cat(out), time.perf_counter() - start


def score(restored: torch.Tensor, truth: torch.Tensor, y: torch.Tensor, op: Operator, *,
          labels: torch.Tensor | None = None, judge: Callable | None = None) -> dict:
    """Metrics of ``N×K`` restorations (floats in [-1, 1]) of ``uint8`` truths: PSNR and SSIM (mean over all
    draws, and of the posterior mean), measurement residual, coverage (``K ≥ 2``), and, with ``judge``
    (``images -> (features, logits)``), class accuracy, class entropy and FD_ref features."""
    n, k = restored.shape[:2]
    flat = to_uint8(restored.flatten(0, 1))
    truth_k = truth.repeat_interleave(k, 0)
    out = {"n": n, "samples": k,
           "psnr": float(restoration.psnr(flat, truth_k).mean()), "ssim": float(restoration.ssim(flat, truth_k).mean()),
           "residual_rms": float((op.take(torch.arange(n).repeat_interleave(k))(restored.flatten(0, 1))
                                  - y.repeat_interleave(k, 0)).pow(2).mean().sqrt())}
    if k > 1:
        mean = to_uint8(restored.mean(1))
        out["psnr_posterior_mean"] = float(restoration.psnr(mean, truth).mean())
        out["ssim_posterior_mean"] = float(restoration.ssim(mean, truth).mean())
        out["coverage"] = restoration.coverage(restored, to_model_range(truth))
        out["std_mean"] = float(restored.std(1).mean())
    if judge is not None:
        features, logits = judge(flat)
        predicted = logits.argmax(1).reshape(n, k)
        out["features"] = features
        if labels is not None:
            out["accuracy"] = float((predicted == labels[:, None]).float().mean())
        out["class_entropy_bits"] = restoration.class_entropy(predicted, logits.shape[1]) if k > 1 else 0.0
    return out


def check_solver_fits(solver, name: str, op: Operator, sigma_y: float) -> None:
    """One-line errors for a solver the operator cannot serve."""
    if solver.needs_svd and not op.has_svd:
        raise DiffrepError(f"{name} needs an operator with an SVD, and {op.name} has none: use reddiff, dps or daps")
    if name == "daps" and sigma_y <= 0:
        raise DiffrepError("daps needs measurement noise for its Langevin step: pass --sigma-y > 0")
