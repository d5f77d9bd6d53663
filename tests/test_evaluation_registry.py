"""The metric registry's contract: every metric, computed through the registry, on a set against itself and
against a disjoint set; unknown metrics and unmet needs are errors, never a fall-through."""

from __future__ import annotations

import pytest
import torch

from diffrep.errors import DiffrepError
from diffrep.evaluation import METRICS, EvalSet, evaluate, get_metric
from diffrep.evaluation.encoders import Encoded
from diffrep.evaluation.registry import MetricInputs

OPTS = {"reference_sqrtm": False, "k_pr": 3, "k_dc": 5, "kid_subset_size": 100}


def _sets():
    g = torch.Generator().manual_seed(0)
    a, a2 = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)      # two draws of one distribution
    far = torch.randn(300, 8, generator=g) + 6.0
    logits = torch.nn.functional.one_hot(torch.arange(300) % 10, 10).float() * 20     # confident and diverse
    return a, a2, far, logits


def _value(name: str, gen, ref, train=None, logits=None) -> dict:
    inputs = MetricInputs(Encoded(gen, logits), Encoded(ref, None), None if train is None else Encoded(train, None), None)
    return get_metric(name).compute(inputs, OPTS).values


EXPECT = {
    # name: (value on a set against a fresh draw of its own distribution, value against a far set) → check
    "fd": lambda same, far: same["fd"] < 0.3 < 10 < far["fd"],
    "fd_inf": lambda same, far: abs(same["fd_inf"]) < 0.3 < 10 < far["fd_inf"],
    "kid": lambda same, far: abs(same["kid"]) < 0.05 < 1 < far["kid"],
    "swd": lambda same, far: same["swd"] < 0.3 < 3 < far["swd"],
    "prdc": lambda same, far: min(same["precision"], same["recall"]) > 0.8 and far["precision"] == far["recall"] == 0,
}


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_tells_a_distribution_from_a_disjoint_one(name):
    a, a2, far, logits = _sets()
    if name in EXPECT:
        assert EXPECT[name](_value(name, a, a2), _value(name, a, far)), name
    elif name == "is":              # of the generated set alone: 10 confident, balanced classes against one class
        assert _value(name, a, a2, logits=logits)["is"] > 8        # at most 10; per-split class counts vary
        assert _value(name, a, a2, logits=torch.zeros(300, 10))["is"] == pytest.approx(1)
    elif name == "vendi":           # effective number of distinct samples: many against one
        assert _value(name, a, a2)["vendi"] > 5 > 1.01 > _value(name, a[:1].repeat(300, 1), a2)["vendi"]
    elif name == "authpct":         # copies of the training set are not authentic; far samples are
        assert _value(name, a, a2, train=a)["authpct"] == 0 and _value(name, far, a2, train=a)["authpct"] == 100
    elif name in ("psnr", "ssim"):  # image i against truth i: identical pairs are perfect, noise costs fidelity
        clean = torch.randint(0, 256, (20, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        noisy = (clean.float() + 40 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1)))
        noisy = noisy.clamp(0, 255).to(torch.uint8)
        same, worse = (get_metric(name).compute(MetricInputs(None, None, None, None, (g, clean)), {}).values[name]
                       for g in (clean, noisy))
        assert (same == float("inf") and 10 < worse < 25) if name == "psnr" else (same == pytest.approx(1) and worse < 0.9)
    elif name == "ct":              # copies sit closer to the training set than fresh test data: C_T ≪ 0
        assert _value(name, a, a2, train=a)["ct"] < -3 < _value(name, torch.randn(300, 8), a2, train=a)["ct"]
    else:
        pytest.fail(f"metric {name} has no contract check: add one")


def test_an_unknown_metric_is_an_error_not_a_fallthrough():
    with pytest.raises(DiffrepError, match="unknown metric 'fid': choose from fd, "):
        get_metric("fid")
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(DiffrepError, match="unknown metric 'wasserstein'"):
        evaluate(EvalSet("a", images), EvalSet("b", images), metric_names=["wasserstein"], encoders=[], progress=False)


def test_paired_metrics_need_sets_of_one_size():
    a, b = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(DiffrepError, match="psnr compare image i of a with image i of b"):
        evaluate(EvalSet("a", a), EvalSet("b", b), metric_names=["psnr"], encoders=[], progress=False)
    rows = evaluate(EvalSet("a", a), EvalSet("b", a), metric_names=["psnr", "ssim"], encoders=[], progress=False)
    assert [(r["encoder"], r["metric"]) for r in rows] == [("pixels", "psnr"), ("pixels", "ssim")]


def test_needs_are_declared_and_checked():
    assert "train" in get_metric("authpct").needs and "logits" in get_metric("is").needs
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(DiffrepError, match="compare samples with the training set: pass --train"):
        evaluate(EvalSet("a", images), EvalSet("b", images), metric_names=["ct"], encoders=[], progress=False)
