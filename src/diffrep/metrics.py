"""Metrics as pure functions of features."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between Gaussians, ``‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2·tr √(Σ1Σ2)``, in float64.

    ``tr √(Σ1Σ2) = Σ √λ_i`` with λ the eigenvalues of the symmetric PSD matrix
    ``√Σ1·Σ2·√Σ1`` (same spectrum as Σ1Σ2), so no complex parts and no ``sqrtm``;
    rank-deficient covariances (n < d) stay real and finite.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance(feat_a: torch.Tensor | np.ndarray, feat_b: torch.Tensor | np.ndarray) -> float:
    """FD between two feature sets (rows are samples); warns when a set has fewer rows than dimensions."""
    for f in (feat_a, feat_b):
        if f.shape[0] < f.shape[1]:
            warnings.warn(f"FD from {f.shape[0]} samples of {f.shape[1]}-d features: the covariance is rank-deficient "
                          "and FD is biased; use more samples", stacklevel=2)
    return frechet_distance_from_stats(*feature_stats(feat_a), *feature_stats(feat_b))
