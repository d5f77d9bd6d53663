"""FD from eigenvalues, and the committed reference encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrep.evaluation.metrics import feature_stats, frechet_distance, frechet_distance_from_stats


def scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid formula with scipy's sqrtm: the parity reference."""
    from scipy import linalg

    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fd_matches_scipy_sqrtm_on_well_conditioned_inputs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 32))
    b = rng.normal(size=(2000, 32)) @ rng.normal(scale=0.3, size=(32, 32)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(scipy_fd(a, b), rel=1e-6)


def test_fd_of_a_set_with_itself_is_zero_and_real_when_rank_deficient():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 64))
    with pytest.warns(UserWarning, match="rank-deficient"):
        same = frechet_distance(a, a)
        other = frechet_distance(a, rng.normal(size=(20, 64)))
    assert abs(same) < 1e-5, "≈ 0 relative to tr Σ ≈ 128"
    assert np.isfinite(other) and other > 0


def test_fd_of_gaussians_in_closed_form():
    """FD(N(0, I), N(m, 4I)) in d dims = |m|² + d(1 + 4 − 2·2)."""
    d = 8
    assert frechet_distance_from_stats(np.zeros(d), np.eye(d), np.ones(d), 4 * np.eye(d)) == pytest.approx(d + d)


def test_reference_encoder_is_accurate_on_the_test_split():
    from diffrep.data import load_builtin
    from diffrep.reference import accuracy, load_reference

    assert accuracy(load_reference("mnist5k"), load_builtin("mnist5k", "test")) >= 0.98


def test_judge_orders_real_above_noise():
    from diffrep.data import ImageSet, load_builtin
    from diffrep.reference import judge

    real = load_builtin("mnist5k", "train").subset(torch.arange(0, 4000, 4))
    noise = ImageSet(torch.randint(0, 256, (500, 1, 32, 32), dtype=torch.uint8), real.labels[:500], 10, "noise")
    good, bad = judge(real), judge(noise)
    assert good.accuracy > 0.98 and good.fd_ratio < 1.5
    assert bad.fd_ratio > 20 * good.fd_ratio


def test_wrong_weights_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    from diffrep.errors import DiffrepError
    from diffrep.reference import load_reference

    save_file({"head.weight": torch.zeros(10, 128), "body.0.0.weight": torch.zeros(32, 1, 3, 3)}, tmp_path / "w.safetensors")
    with pytest.raises(DiffrepError, match="missing keys"):
        load_reference(path=tmp_path / "w.safetensors")


def test_the_reference_encoder_is_the_one_of_the_reference_data():
    from diffrep.cli.evaluate import default_encoder
    from diffrep.data import load_builtin
    from diffrep.errors import DiffrepError
    from diffrep.evaluation import extract_features, get_encoder

    digits = load_builtin("digits", "test")
    accuracy = {}
    for data in ("digits:test", "mnist5k:test", None):
        encoded = extract_features(get_encoder("reference", data=data), digits.images, progress=False)
        accuracy[data] = float((encoded.logits.argmax(1) == digits.labels).float().mean())
    assert accuracy["digits:test"] > 0.95 > 0.5 > accuracy["mnist5k:test"] == accuracy[None], accuracy
    with pytest.raises(DiffrepError, match="not on samples.npz: use encoders that fit any images \\(inception"):
        get_encoder("reference", data="samples.npz")
    assert default_encoder("digits:test") == "reference" and default_encoder("my-photos/") == "inception"


def test_the_judges_fixed_side_is_computed_once_per_process_and_builtin_arrays_stay_untouched():
    from diffrep.data import load_builtin
    from diffrep.reference import _reference_side, judge

    samples = load_builtin("digits", "test")
    first = judge(samples, "digits")
    hits = _reference_side.cache_info().hits
    assert judge(samples, "digits") == first and _reference_side.cache_info().hits == hits + 1
    everything = load_builtin("digits", "all")
    everything.images.zero_()                       # a caller's in-place edit of its copy …
    assert load_builtin("digits", "all").images.any()   # … does not reach the cached arrays


def test_the_judges_fixed_side_is_read_from_the_feature_cache_in_a_new_process(tmp_path, monkeypatch):
    """A second process (here: a cleared in-process cache) reads the test and train features from disk."""
    from diffrep import reference
    from diffrep.data import load_builtin

    monkeypatch.setenv("DIFFREP_CACHE", str(tmp_path))
    calls = []
    real = reference.encode
    monkeypatch.setattr(reference, "encode", lambda net, images: calls.append(len(images)) or real(net, images))
    samples = load_builtin("digits", "test")
    reference._reference_side.cache_clear()
    first = reference.judge(samples, "digits")
    assert len(calls) == 3, "test, train and the samples encoded"
    reference._reference_side.cache_clear()
    assert reference.judge(samples, "digits") == first and len(calls) == 4, "only the samples encoded again"
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 2
    reference._reference_side.cache_clear()
