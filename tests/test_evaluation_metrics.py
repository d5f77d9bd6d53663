"""The evaluation metrics against closed forms, direct references and their limiting cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffrep.evaluation import metrics
from diffrep.errors import DiffrepError


@pytest.fixture
def gauss():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 16)), rng.normal(size=(300, 16))


def test_fd_reference_sqrtm_mode_agrees_with_the_eigenvalue_path(gauss):
    a, b = gauss
    b = b * 1.3 + 0.2
    fast, slow = metrics.fd(a, b).values["fd"], metrics.fd(a, b, reference_sqrtm=True).values["fd"]
    assert fast == pytest.approx(slow, rel=1e-6)
    assert metrics.fd(a, b).params == {"n_gen": 300, "n_ref": 300, "dim": 16, "method": "cholesky-eigvalsh-float64"}


def test_fd_from_adm_statistics_equals_fd_from_features(gauss):
    a, b = gauss
    mu, sigma = metrics.feature_stats(b)
    assert metrics.fd_from_stats(a, mu, sigma).values["fd"] == pytest.approx(metrics.fd(a, b).values["fd"], rel=1e-12)
    with pytest.raises(DiffrepError, match="16-d"):
        metrics.fd_from_stats(a[:, :8], mu, sigma)


def test_fd_infinity_removes_the_small_sample_bias():
    """Two samples of the same Gaussian: FD > 0 from the finite-n bias; FD∞ extrapolates it towards 0."""
    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(2000, 32)), rng.normal(size=(20000, 32))
    fd = metrics.fd(gen, ref).values["fd"]
    fd_inf = metrics.fd_infinity(gen, ref).values["fd_inf"]
    assert abs(fd_inf) < 0.3 * fd


def _kid_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel, by explicit double sums."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_a_direct_double_sum_on_both_code_paths():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 0.5
    direct = _kid_direct(x, y)
    full = metrics.kid(x, y, num_subsets=3, subset_size=40)
    per_subset = metrics.kid(x, y, num_subsets=3, subset_size=40, max_full_kernel=0)
    assert full.values["kid"] == pytest.approx(direct, rel=1e-10)
    assert per_subset.values["kid"] == pytest.approx(direct, rel=1e-10)
    assert full.values["kid_std"] == pytest.approx(0, abs=1e-12), "subsets of the whole set are the whole set"
    sub_full = metrics.kid(x, y, num_subsets=5, subset_size=20).values["kid"]
    sub_each = metrics.kid(x, y, num_subsets=5, subset_size=20, max_full_kernel=0).values["kid"]
    assert sub_full == pytest.approx(sub_each, rel=1e-10)


def test_inception_score_limits():
    constant = np.tile([5.0, 0.0, 0.0, 0.0], (100, 1))
    assert metrics.inception_score(constant).values["is"] == pytest.approx(1.0)
    confident = np.eye(4)[np.arange(100) % 4] * 50.0     # uniform over 4 classes, each image certain
    assert metrics.inception_score(confident, splits=1).values["is"] == pytest.approx(4.0, rel=1e-6)
    sorted_by_class = np.eye(4)[np.sort(np.arange(2000) % 4)] * 50.0
    assert metrics.inception_score(sorted_by_class).values["is"] == pytest.approx(4.0, rel=0.02), "splits are shuffled"
    ten_classes = np.eye(10)[np.arange(21) % 10] * 50.0      # 21 is no multiple of 10: still 10 splits
    assert metrics.inception_score(ten_classes, splits=10).values["is"] < 2.2     # 7 splits of 3 gave 2.84


def test_prdc_is_one_for_identical_and_zero_for_disjoint_sets(gauss):
    a, b = gauss
    same = metrics.prdc(a, a.copy()).values
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))    # same distribution, independent draws
    near = metrics.prdc(x, y).values
    assert near["precision"] > 0.9 and near["recall"] > 0.9 and near["coverage"] > 0.9
    assert near["density"] == pytest.approx(1.0, abs=0.1)
    far = metrics.prdc(a, b + 100.0).values
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_refuses_fewer_samples_than_k():
    x = np.zeros((4, 3))
    with pytest.raises(DiffrepError, match="k=5"):
        metrics.prdc(x, x, k_pr=3, k_dc=5)


def test_vendi_counts_distinct_samples():
    assert metrics.vendi(np.ones((50, 8))).values["vendi"] == pytest.approx(1.0)
    assert metrics.vendi(np.eye(8)).values["vendi"] == pytest.approx(8.0)
    assert metrics.vendi(np.repeat(np.eye(4), 5, axis=0)).values["vendi"] == pytest.approx(4.0)


def test_authenticity_flags_copies_and_passes_novel_samples():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 8))
    assert metrics.authenticity(train[:50] + 1e-6, train).values["authpct"] == 0.0
    assert metrics.authenticity(train[:50] + 50.0, train).values["authpct"] == 100.0


def test_ct_is_negative_for_copies_and_near_zero_for_fresh_samples():
    rng = np.random.default_rng(0)
    train, test, fresh = (rng.normal(size=(n, 4)) for n in (1000, 400, 400))
    copies = train[:400] + 1e-3 * rng.normal(size=(400, 4))
    assert metrics.ct_score(copies, train, test, num_cells=5).values["ct"] < -5
    assert abs(metrics.ct_score(fresh, train, test, num_cells=5).values["ct"]) < 2.5
    with pytest.raises(DiffrepError, match="C_T"):
        metrics.ct_score(copies[:3], train, test, num_cells=5)


def test_mann_whitney_z_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), np.round(rng.normal(size=40) + 0.3, 1)
    u = stats.mannwhitneyu(a, b, use_continuity=False, method="asymptotic")
    mean, sd = 30 * 40 / 2, math.sqrt(30 * 40 * 71 / 12)
    assert metrics._mann_whitney_z(a, b) == pytest.approx((u.statistic - mean) / sd, rel=1e-10)


def test_sliced_wasserstein_of_a_shift():
    """Shifting by v moves every projection by v·θ: SW2 = √E(v·θ)² = |v|/√d."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 10))
    assert metrics.sliced_wasserstein(a, a).values["swd"] == 0.0
    shifted = metrics.sliced_wasserstein(a, a + 2.0, num_projections=4000).values["swd"]
    assert shifted == pytest.approx(2.0 * math.sqrt(10) / math.sqrt(10), rel=0.05)
    unequal = metrics.sliced_wasserstein(a, np.concatenate([a, a])).values["swd"]
    assert unequal < 0.02, "quantiles let sets of different sizes compare"


def test_metrics_accept_torch_tensors_and_refuse_mismatched_dimensions(gauss):
    a, b = gauss
    assert metrics.fd(torch.tensor(a), torch.tensor(b)).values["fd"] == pytest.approx(metrics.fd(a, b).values["fd"])
    with pytest.raises(DiffrepError, match="different dimensions"):
        metrics.kid(a, b[:, :8])
