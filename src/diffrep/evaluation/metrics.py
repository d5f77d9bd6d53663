"""Metrics as pure functions of features (rows are samples).

Each metric returns a :class:`MetricResult`: its numbers plus what they were computed
on (sample counts, feature dimension, k, subsets…).  The evaluation layer adds the
encoder, its weights hash and the resize mode.  Sums run in float64.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from diffrep.errors import DiffrepError

Features = torch.Tensor | np.ndarray


@dataclass
class MetricResult:
    """``values`` (e.g. ``{"precision": 0.7, "recall": 0.6}``) and the ``params`` they were computed with."""

    values: dict[str, float]
    params: dict[str, object] = field(default_factory=dict)


def _f64(x: Features) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


def _check_sets(*sets: np.ndarray, min_rows: int = 1) -> None:
    dims = {s.shape[1] for s in sets}
    if len(dims) > 1:
        raise DiffrepError(f"feature sets have different dimensions {sorted(dims)}: compute them with the same encoder")
    for s in sets:
        if s.shape[0] < min_rows:
            raise DiffrepError(f"a feature set has {s.shape[0]} rows; this metric needs at least {min_rows}")


def _warn_if_rank_deficient(*sets: np.ndarray) -> None:
    for s in sets:
        if s.shape[0] < s.shape[1]:
            warnings.warn(f"FD from {s.shape[0]} samples of {s.shape[1]}-d features: the covariance is rank-deficient "
                          "and FD is biased; use more samples", stacklevel=3)


# ---------------------------------------------------------------- Fréchet distance (1706.08500)

def _gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """``xᵀx``, computing only the column blocks on and above the diagonal (the matrix is symmetric):
    10 of 16 block products for 4 blocks."""
    d = x.shape[1]
    edges = [d * i // blocks for i in range(blocks + 1)]
    out = torch.empty(d, d, dtype=x.dtype)
    for i in range(blocks):
        for j in range(i, blocks):
            block = x[:, edges[i]:edges[i + 1]].T @ x[:, edges[j]:edges[j + 1]]
            out[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = block
            out[edges[j]:edges[j + 1], edges[i]:edges[i + 1]] = block.T
    return out


def feature_stats(features: Features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance, accumulated in float64."""
    x = torch.as_tensor(features.detach().cpu() if isinstance(features, torch.Tensor) else np.asarray(features))
    x = x.to(torch.float64, copy=True)
    mu = x.mean(0)
    x -= mu
    return mu.numpy(), (_gram(x) / (len(x) - 1)).numpy()


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """``L`` with ``L·Lᵀ = Σ``: Cholesky when Σ is positive definite, else the eigen square root
    (rank-deficient covariances, n ≤ d)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(sigma)
        return v * np.sqrt(np.clip(w, 0, None))


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between Gaussians, ``‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2·tr √(Σ1Σ2)``, in float64.

    With ``Σ1 = L·Lᵀ`` (Cholesky), Σ1Σ2 has the eigenvalues of the symmetric PSD matrix
    ``Lᵀ·Σ2·L``, so ``tr √(Σ1Σ2) = Σ √λ_i`` from ``eigvalsh``: no complex parts, no ``sqrtm``, and
    rank-deficient covariances (n < d, where Cholesky gives way to the eigen square root) stay
    real and finite.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _psd_factor(sigma1)
    lam = np.linalg.eigvalsh(root1.T @ sigma2 @ root1)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_sqrtm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The same distance the way pytorch-fid computes it (``scipy.linalg.sqrtm``), for parity checks only."""
    try:
        from scipy import linalg
    except ImportError:
        raise DiffrepError("--reference-sqrtm needs scipy: pip install scipy") from None
    covmean = linalg.sqrtm(np.asarray(sigma1, np.float64) @ np.asarray(sigma2, np.float64))
    covmean = np.real(covmean)
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance(feat_a: Features, feat_b: Features) -> float:
    """FD between two feature sets; warns when a set has fewer rows than dimensions."""
    a, b = _f64(feat_a), _f64(feat_b)
    _check_sets(a, b, min_rows=2)
    _warn_if_rank_deficient(a, b)
    return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))


def fd(gen: Features, ref: Features, *, reference_sqrtm: bool = False) -> MetricResult:
    """Fréchet distance (FID when the features are Inception pool3; arXiv 1706.08500)."""
    g, r = _f64(gen), _f64(ref)
    _check_sets(g, r, min_rows=2)
    _warn_if_rank_deficient(g, r)
    distance = frechet_distance_sqrtm if reference_sqrtm else frechet_distance_from_stats
    value = distance(*feature_stats(g), *feature_stats(r))
    return MetricResult({"fd": value}, {"n_gen": len(g), "n_ref": len(r), "dim": g.shape[1],
                                        "method": "scipy-sqrtm" if reference_sqrtm else "cholesky-eigvalsh-float64"})


def fd_from_stats(gen: Features, mu: np.ndarray, sigma: np.ndarray) -> MetricResult:
    """FD of features against precomputed reference statistics (an ADM ``.npz``'s ``mu``/``sigma``)."""
    g = _f64(gen)
    if np.shape(mu) != (g.shape[1],):
        raise DiffrepError(f"reference statistics are {np.shape(mu)[0]}-d but the features are {g.shape[1]}-d: "
                         "use the encoder the statistics were computed with")
    _warn_if_rank_deficient(g)
    return MetricResult({"fd": frechet_distance_from_stats(*feature_stats(g), mu, sigma)},
                        {"n_gen": len(g), "n_ref": "stats", "dim": g.shape[1], "method": "cholesky-eigvalsh-float64"})


def fd_infinity(gen: Features, ref: Features, *, num_points: int = 15, min_fraction: float = 0.1,
                seed: int = 0) -> MetricResult:
    """FD∞ (Chong & Forsyth, arXiv 1911.07023): FD of generated subsets of growing size N, fitted
    linearly in 1/N and extrapolated to N → ∞ (the bias-free value)."""
    g, r = _f64(gen), _f64(ref)
    _check_sets(g, r, min_rows=2)
    mu_r, sigma_r = feature_stats(r)
    sizes = np.unique(np.linspace(max(2, int(min_fraction * len(g))), len(g), num_points).astype(int))
    if len(sizes) < 2:
        raise DiffrepError(f"FD∞ needs generated sets of at least two sizes; got {len(g)} samples")
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fds = [frechet_distance_from_stats(*feature_stats(g[rng.permutation(len(g))[:n]]), mu_r, sigma_r)
               for n in sizes]
    slope, intercept = np.polyfit(1.0 / sizes, fds, 1)
    return MetricResult({"fd_inf": float(intercept)}, {"n_gen": len(g), "n_ref": len(r), "dim": g.shape[1],
                                                       "sizes": sizes.tolist(), "slope": float(slope), "seed": seed})


# ---------------------------------------------------------------- kernel distance (1801.01401)

def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``k(a, b) = (aᵀb / d + 1)³`` for every pair of rows."""
    return ((x @ y.T) / x.shape[1] + 1) ** 3


def _unbiased_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(gen: Features, ref: Features, *, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0, max_full_kernel: int = 5000) -> MetricResult:
    """Kernel Inception Distance (Bińkowski et al., arXiv 1801.01401): unbiased MMD² with a cubic
    polynomial kernel, averaged over random subsets; ``kid_std`` is its spread over subsets.

    Sets of at most ``max_full_kernel`` rows get their kernel matrices computed once and indexed
    per subset; larger sets compute each subset's kernels.
    """
    g, r = _f64(gen), _f64(ref)
    _check_sets(g, r, min_rows=2)
    m = min(subset_size, len(g), len(r))
    rng = np.random.default_rng(seed)
    full = max(len(g), len(r)) <= max_full_kernel
    if full:
        kgg, krr, kgr = _polynomial_kernel(g, g), _polynomial_kernel(r, r), _polynomial_kernel(g, r)
    scores = []
    for _ in range(num_subsets):
        i, j = rng.choice(len(g), m, replace=False), rng.choice(len(r), m, replace=False)
        if full:
            scores.append(_unbiased_mmd2(kgg[np.ix_(i, i)], krr[np.ix_(j, j)], kgr[np.ix_(i, j)]))
        else:
            gi, rj = g[i], r[j]
            scores.append(_unbiased_mmd2(_polynomial_kernel(gi, gi), _polynomial_kernel(rj, rj),
                                         _polynomial_kernel(gi, rj)))
    return MetricResult({"kid": float(np.mean(scores)), "kid_std": float(np.std(scores))},
                        {"n_gen": len(g), "n_ref": len(r), "subsets": num_subsets, "subset_size": m, "seed": seed})


# ---------------------------------------------------------------- Inception Score (1606.03498)

def inception_score(logits: Features, *, splits: int = 10, seed: int = 0) -> MetricResult:
    """IS (Salimans et al., arXiv 1606.03498) ``exp E_x KL(p(y|x) ‖ p(y))`` from classifier logits,
    mean and std over ``splits`` parts (sizes differing by at most one) of a seeded shuffle (sets sorted by
    class stay fair)."""
    x = torch.as_tensor(_f64(logits))
    if len(x) < splits:
        raise DiffrepError(f"IS with {splits} splits needs at least {splits} samples, got {len(x)}")
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    log_p = torch.log_softmax(x, dim=1)
    scores = []
    for part in log_p.tensor_split(splits):
        log_marginal = torch.logsumexp(part, 0) - math.log(len(part))
        scores.append(float(torch.exp((part.exp() * (part - log_marginal)).sum(1).mean())))
    return MetricResult({"is": float(np.mean(scores)), "is_std": float(np.std(scores))},
                        {"n_gen": len(x), "splits": splits, "classes": x.shape[1], "seed": seed})


# ---------------------------------------------------------------- k-NN manifolds (1904.06991, 2002.09797)

def _pairwise_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([torch.cdist(part, b) for part in a.split(chunk)])


def _kth_neighbour_radius(x: torch.Tensor, k: int, as_second: bool = False) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row.  ``cdist``'s matrix-product path is not exactly
    symmetric (d(a, b) and d(b, a) may differ in the last bits), so a radius is measured in the orientation in which
    it is compared: ``as_second`` when its points are ``cdist``'s second argument there."""
    if as_second:
        return torch.cat([torch.cdist(x, part).kthvalue(k + 1, dim=0).values for part in x.split(4096)])
    return torch.cat([torch.cdist(part, x).kthvalue(k + 1, dim=1).values for part in x.split(4096)])


def prdc(gen: Features, ref: Features, *, k_pr: int = 3, k_dc: int = 5) -> MetricResult:
    """Precision/recall (Kynkäänniemi et al., arXiv 1904.06991; k-NN balls, ``k_pr``) and
    density/coverage (Naeem et al., arXiv 2002.09797; ``k_dc``).  A point on a ball's edge is outside it (strict
    ``<``), as in the authors' ``prdc`` package: a set against itself has density 1 with distinct points."""
    g, r = torch.as_tensor(_f64(gen)), torch.as_tensor(_f64(ref))
    _check_sets(g.numpy(), r.numpy())
    k_max = max(k_pr, k_dc)
    if min(len(g), len(r)) <= k_max:
        raise DiffrepError(f"PRDC with k={k_max} needs more than {k_max} samples per set, got {len(g)} generated "
                         f"and {len(r)} reference: lower k or pass more samples")
    d_gr = _pairwise_distances(g, r)                       # n_gen × n_ref
    radius_r_pr, radius_g_pr = _kth_neighbour_radius(r, k_pr, as_second=True), _kth_neighbour_radius(g, k_pr)
    radius_r_dc = _kth_neighbour_radius(r, k_dc, as_second=True)
    precision = (d_gr < radius_r_pr[None]).any(1).double().mean()
    recall = (d_gr < radius_g_pr[:, None]).any(0).double().mean()
    density = (d_gr < radius_r_dc[None]).double().sum() / (k_dc * len(g))
    coverage = (d_gr.min(0).values < radius_r_dc).double().mean()
    return MetricResult({"precision": float(precision), "recall": float(recall), "density": float(density),
                         "coverage": float(coverage)},
                        {"n_gen": len(g), "n_ref": len(r), "k_pr": k_pr, "k_dc": k_dc})


# ---------------------------------------------------------------- diversity and memorisation

def vendi(gen: Features) -> MetricResult:
    """Vendi score (Friedman & Dieng, arXiv 2210.02410) with the cosine kernel: ``exp`` of the Shannon
    entropy of the eigenvalues of K/n — the effective number of distinct samples (1 … n)."""
    x = _f64(gen)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    lam = np.linalg.eigvalsh(x.T @ x / len(x))             # same non-zero spectrum as K/n, d×d not n×n
    lam = lam[lam > 1e-12]
    return MetricResult({"vendi": float(np.exp(-(lam * np.log(lam)).sum()))}, {"n_gen": len(x), "kernel": "cosine"})


def authenticity(gen: Features, train: Features) -> MetricResult:
    """authpct (Alaa et al., arXiv 2102.08921): the percentage of generated samples farther from their
    nearest training sample than that training sample is from its own nearest training neighbour."""
    g, t = torch.as_tensor(_f64(gen)), torch.as_tensor(_f64(train))
    _check_sets(g.numpy(), t.numpy(), min_rows=2)
    d_gt = _pairwise_distances(g, t)
    nearest_dist, nearest = d_gt.min(1)
    radius_t = _kth_neighbour_radius(t, 1)
    authentic = nearest_dist > radius_t[nearest]
    return MetricResult({"authpct": float(100 * authentic.double().mean())}, {"n_gen": len(g), "n_train": len(t)})


def _mann_whitney_z(a: np.ndarray, b: np.ndarray) -> float:
    """z-score of the Mann–Whitney U statistic of ``a`` against ``b`` (ties get average ranks)."""
    values = np.concatenate([a, b])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, ranks) / counts)[inverse]
    m, n = len(a), len(b)
    u = ranks[:m].sum() - m * (m + 1) / 2
    return float((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))


def ct_score(gen: Features, train: Features, test: Features, *, num_cells: int = 20, min_per_cell: int = 5,
             seed: int = 0) -> MetricResult:
    """The C_T data-copying test (Meehan et al., arXiv 2004.05675).

    The training set is cut into ``num_cells`` k-means cells; in each cell the distances of generated
    and of held-out test samples to their nearest training sample are compared with a Mann–Whitney
    z-score, and the scores are averaged weighted by the cell's share of test samples.  C_T ≪ 0:
    samples sit closer to the training set than fresh data does (copying); ≫ 0: under-fitting.
    Cells with fewer than ``min_per_cell`` generated or test samples are skipped.
    """
    from sklearn.cluster import KMeans

    g, tr, te = _f64(gen), _f64(train), _f64(test)
    _check_sets(g, tr, te, min_rows=2)
    cells = KMeans(num_cells, n_init=3, random_state=seed).fit(tr.astype(np.float32))
    cell_g, cell_te = cells.predict(g.astype(np.float32)), cells.predict(te.astype(np.float32))
    tr_t = torch.as_tensor(tr)
    d_g = _pairwise_distances(torch.as_tensor(g), tr_t).min(1).values.numpy()
    d_te = _pairwise_distances(torch.as_tensor(te), tr_t).min(1).values.numpy()
    zs, weights = [], []
    for c in range(num_cells):
        in_g, in_te = d_g[cell_g == c], d_te[cell_te == c]
        if len(in_g) >= min_per_cell and len(in_te) >= min_per_cell:
            zs.append(_mann_whitney_z(in_g, in_te))
            weights.append(len(in_te))
    if not zs:
        raise DiffrepError(f"C_T: no k-means cell holds {min_per_cell} generated and test samples; pass more samples "
                         "or fewer cells")
    return MetricResult({"ct": float(np.average(zs, weights=weights))},
                        {"n_gen": len(g), "n_train": len(tr), "n_test": len(te), "cells": num_cells,
                         "cells_used": len(zs), "seed": seed})


# ---------------------------------------------------------------- sliced Wasserstein (Rabin et al. 2011)

def _quantiles(x: np.ndarray, size: int) -> np.ndarray:
    """Column-wise quantiles of ``x`` at the ``size`` levels ``(i + ½) / size`` (linear interpolation)."""
    x = np.sort(x, axis=0)
    pos = np.clip((np.arange(size) + 0.5) / size * len(x) - 0.5, 0, len(x) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(x) - 1)
    frac = (pos - lo)[:, None]
    return x[lo] * (1 - frac) + x[hi] * frac


def sliced_wasserstein(gen: Features, ref: Features, *, num_projections: int = 1000, seed: int = 0) -> MetricResult:
    """Sliced Wasserstein-2 distance: √(mean over random unit directions of W2² between the projected
    sets), each 1-D W2 computed from quantiles, so the sets may differ in size."""
    g, r = _f64(gen), _f64(ref)
    _check_sets(g, r)
    directions = np.random.default_rng(seed).standard_normal((g.shape[1], num_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    size = max(len(g), len(r))
    qg, qr = _quantiles(g @ directions, size), _quantiles(r @ directions, size)
    return MetricResult({"swd": float(np.sqrt(((qg - qr) ** 2).mean()))},
                        {"n_gen": len(g), "n_ref": len(r), "projections": num_projections, "seed": seed})

