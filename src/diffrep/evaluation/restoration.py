"""Restoration metrics: image-by-image fidelity (PSNR, SSIM through torchmetrics) and the calibration of
posterior samples (interval coverage, class entropy).

Images are ``uint8`` (what is saved and viewed) unless a function says otherwise; fidelity is computed
on [0, 1].  Posterior samples come as ``N×K×C×H×W``: ``K`` restorations of each of ``N`` inputs.
"""

from __future__ import annotations

import math

import torch

from diffrep.errors import DiffrepError


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def check_pairs(restored: torch.Tensor, truth: torch.Tensor) -> None:
    if restored.shape != truth.shape:
        raise DiffrepError(f"restorations {tuple(restored.shape)} and truths {tuple(truth.shape)} differ: paired metrics "
                           "compare image i with truth i, so pass two sets of the same size and order")


def psnr(restored: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (data range 1)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    check_pairs(restored, truth)
    return peak_signal_noise_ratio(_unit(restored), _unit(truth), data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(restored: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004; 11-pixel Gaussian window, σ 1.5, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    check_pairs(restored, truth)
    return structural_similarity_index_measure(_unit(restored), _unit(truth), data_range=1.0, reduction="none")


def coverage(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9) -> dict[str, float]:
    """How often the true pixel lies inside the samples' central ``level`` interval.

    ``interval``: the prediction interval ``mean ± t_{(1+level)/2, K−1}·std·√(1 + 1/K)`` from the ``K``
    samples, which covers a new draw from the same Gaussian with probability exactly ``level`` — a
    calibrated posterior scores ``level``.  ``range``: the truth inside ``[min, max]`` of the samples, whose
    calibrated value is ``(K − 1)/(K + 1)`` for any distribution (reported as ``range_ideal``).
    ``interval_varying``: the interval's coverage over the pixels whose draws differ (std > 1e-3): where every
    draw agrees (a clamped background pixel), a zero-width interval covers a truth equal to it trivially, so
    the overall number can exceed what the posterior's spread earns.
    ``samples``: ``N×K×…`` floats; ``truth``: ``N×…`` in the same units.
    """
    k = samples.shape[1]
    if k < 2:
        raise DiffrepError("coverage needs at least 2 samples per input: pass --samples 2 or more")
    mean, std = samples.mean(1), samples.std(1)
    from scipy.stats import t as student_t   # scipy comes with scikit-learn

    half = float(student_t.ppf((1 + level) / 2, k - 1)) * std * math.sqrt(1 + 1 / k)
    inside = (truth >= mean - half) & (truth <= mean + half)
    in_range = (truth >= samples.amin(1)) & (truth <= samples.amax(1))
    varying = std > 1e-3
    return {"interval": float(inside.float().mean()), "level": level, "range": float(in_range.float().mean()),
            "range_ideal": (k - 1) / (k + 1), "varying_fraction": float(varying.float().mean()),
            "interval_varying": float(inside[varying].float().mean()) if varying.any() else float("nan")}


def class_entropy(predicted: torch.Tensor, num_classes: int) -> float:
    """Mean over inputs of the entropy (bits) of the classes the ``K`` restorations of each input are given
    (``predicted``: ``N×K`` class indices): 0 when every draw keeps one class."""
    counts = torch.nn.functional.one_hot(predicted, num_classes).sum(1).float()
    p = counts / counts.sum(1, keepdim=True)
    return float(-(p * torch.log2(p.clamp_min(1e-12))).sum(1).mean())
