"""FD between two 50,000×2,048 feature sets: diffrep's float64 Cholesky/eigvalsh path vs the scipy ``sqrtm`` path.

The scipy path is pytorch-fid's ``calculate_frechet_distance`` recipe: ``np.mean``/``np.cov`` of the
features, then ``scipy.linalg.sqrtm(Σ1·Σ2)`` and its real part.  diffrep computes the same
statistics with float64 matmuls in torch (only the blocks on and above the diagonal of the symmetric
covariance) and ``tr √(Σ1Σ2)`` from the eigenvalues of ``Lᵀ·Σ2·L`` (``Σ1 = L·Lᵀ``, Cholesky).
Both stages are timed separately and end to end, in the same process on the same features.

    python benchmarks/fd_speed.py [--n 50000] [--dim 2048]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import table, write_result
from diffrep.evaluation.metrics import feature_stats, frechet_distance_from_stats, frechet_distance_sqrtm


def synthetic_features(n: int, dim: int, shift: float, seed: int) -> np.ndarray:
    """Inception-like features: non-negative, correlated, float32."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim ** 0.5
    z = torch.randn(n, dim, generator=g) + shift
    return torch.relu(z @ mix).numpy()


def numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.mean(x, axis=0), np.cov(x, rowvar=False)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=2048)
    args = ap.parse_args()
    a = synthetic_features(args.n, args.dim, 0.0, 0)
    b = synthetic_features(args.n, args.dim, 0.05, 1)

    (stats_np_a, t_np_a), (stats_np_b, t_np_b) = timed(numpy_stats, a), timed(numpy_stats, b)
    fd_scipy, t_sqrtm = timed(frechet_distance_sqrtm, *stats_np_a, *stats_np_b)
    (stats_a, t_a), (stats_b, t_b) = timed(feature_stats, a), timed(feature_stats, b)
    fd_ours, t_eig = timed(frechet_distance_from_stats, *stats_a, *stats_b)

    scipy_total, ours_total = t_np_a + t_np_b + t_sqrtm, t_a + t_b + t_eig
    rows = [
        {"stage": "mean + covariance (both sets)", "scipy_path_s": t_np_a + t_np_b, "diffrep_s": t_a + t_b},
        {"stage": "FD from statistics", "scipy_path_s": t_sqrtm, "diffrep_s": t_eig},
        {"stage": "end to end", "scipy_path_s": scipy_total, "diffrep_s": ours_total},
    ]
    for r in rows:
        r["speed-up"] = r["scipy_path_s"] / r["diffrep_s"]
    rel = abs(fd_ours - fd_scipy) / abs(fd_scipy)
    print(f"FD of two {args.n:,}×{args.dim:,} sets: scipy-sqrtm {fd_scipy:.6f}, diffrep {fd_ours:.6f}, "
          f"relative difference {rel:.2e}")
    print(table(rows, ["stage", "scipy_path_s", "diffrep_s", "speed-up"]))
    path = write_result("fd_speed", {"n": args.n, "dim": args.dim, "fd_scipy_sqrtm": fd_scipy, "fd_diffrep": fd_ours,
                                     "relative_difference": rel, "rows": rows,
                                     "command": f"python benchmarks/fd_speed.py --n {args.n} --dim {args.dim}"})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
