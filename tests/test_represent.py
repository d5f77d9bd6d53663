"""Diffusion features at (block, t), probes, and the Diffusion Classifier's pairing and schedules."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import SMOKE
from diffrep.represent.diffusion_classifier import PairErrors, classify, fit_time_weights, fit_temperature, probabilities
from diffrep.errors import DiffrepError
from diffrep.nets import build_net
from diffrep.represent.probes import ProbeSplit, knn_probe, knn_whitened_probe, linear_probe
from diffrep.processes import make_process
from diffrep.represent.features import diffusion_features, resolve_blocks


def _images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("model", ["UNet-S", "DiT-T/4"])
@pytest.mark.parametrize("resample", [False, True])
def test_features_do_not_depend_on_batching(model, resample):
    torch.manual_seed(0)
    net = build_net(model, 16, 1, 10).eval()
    images = _images(7, 16)
    kw = dict(blocks=resolve_blocks("all", net.tap_names)[:3], times=[0.1, 0.5], seed=3, resample=resample,
              noise_draws=2, autocast=False, progress=False)
    one = diffusion_features(net, make_process("flow"), images, batch_size=7, **kw)
    many = diffusion_features(net, make_process("flow"), images, batch_size=3, **kw)
    assert one.keys() == many.keys() and len(one) == 6
    for k in one:
        torch.testing.assert_close(one[k], many[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(DiffrepError, match="unknown block"):
        resolve_blocks("block99", net.tap_names)


def test_averaging_over_noise_draws_shrinks_the_noise_in_the_features():
    torch.manual_seed(0)
    net = build_net("UNet-S", 16, 1, 10).eval()
    kw = dict(blocks=("block2",), times=[0.5], pooling="grid2", autocast=False, progress=False)
    images = _images(8, 16)

    def spread(draws: int) -> float:     # how far two seeds' features lie apart, relative to their size
        a, b = (diffusion_features(net, make_process("flow"), images, seed=s, noise_draws=draws, **kw)["block2", 0.5]
                for s in (0, 1))
        return float((a - b).norm() / a.norm())

    one, eight = spread(1), spread(8)
    assert eight < 0.5 * one, (one, eight)         # ~1/√8 of the spread of a single draw
    with pytest.raises(DiffrepError, match="noise_draws"):
        diffusion_features(net, make_process("flow"), images, noise_draws=0, **kw)


def test_whitened_knn_ignores_a_loud_direction_that_raw_cosine_follows():
    g = torch.Generator().manual_seed(0)

    def features(y: torch.Tensor) -> torch.Tensor:      # 3 loud nuisance directions, the class along a 4th, noise
        x = torch.randn(len(y), 20, generator=g)
        x[:, :3] *= 30
        x[:, 3] += 3 * (2 * y - 1)
        return x

    y_train, y_test = torch.arange(800) % 2, torch.arange(400) % 2
    split = _split(features(y_train), features(y_test), y_train, y_test)
    assert knn_probe(split) < 0.7 < 0.95 < knn_whitened_probe(split, components=4)
    noise = _split(split.train, split.test, torch.randint(0, 2, (800,), generator=g), y_test)
    assert abs(knn_whitened_probe(noise, components=4) - 0.5) < 0.1


def _split(train: torch.Tensor, test: torch.Tensor, y_train: torch.Tensor, y_test: torch.Tensor) -> ProbeSplit:
    return ProbeSplit(train, test, y_train, y_test)


def test_probes_separate_separable_features_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    y_train, y_test = torch.arange(600) % 3, torch.arange(300) % 3
    centres = 4 * torch.randn(3, 16, generator=g)
    sep = _split(centres[y_train] + torch.randn(600, 16, generator=g), centres[y_test] + torch.randn(300, 16, generator=g),
                 y_train, y_test)
    noise = _split(torch.randn(600, 16, generator=g), torch.randn(300, 16, generator=g), y_train, y_test)
    acc = {k: a for k, (a, _) in linear_probe({"sep": sep, "noise": noise}).items()}
    assert acc["sep"] > 0.98 and abs(acc["noise"] - 1 / 3) < 0.1
    torch.manual_seed(123)      # the probe draws from its own seeded generator, not the global one
    once = dict(weight_decays=(0.1,), epochs=1, lr=1e-3)      # short: the initialisation shows in the accuracy
    assert linear_probe({"noise": noise}, **once) == linear_probe({"noise": noise}, **once)
    assert knn_probe(sep) > 0.98 and abs(knn_probe(noise) - 1 / 3) < 0.1


def _synthetic_pair_errors(n: int, classes: int, pairs: int, margin: float, seed: int = 0) -> tuple[PairErrors, torch.Tensor]:
    """Pair errors set directly: the true class is ``margin`` better on average, with noise."""
    net = build_net("UNet-S", 8, 1, classes)
    pe = PairErrors(net, make_process("flow"), _images(n), classes, pairs=pairs, autocast=False)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    errors = 1.0 + 0.1 * torch.randn(n, classes, pairs, generator=g)
    errors[torch.arange(n), labels] -= margin
    pe.errors = errors
    return pe, labels


@pytest.mark.parametrize("schedule", ["adaptive", "racing"])
def test_schedules_never_drop_a_true_class_with_a_large_margin(schedule):
    pe, labels = _synthetic_pair_errors(40, 10, 20, margin=0.5)
    result = classify(pe, schedule=schedule, rounds=[(2, 3), (20, 1)], round_size=2)
    assert torch.equal(result.predictions, labels)
    assert result.calls.float().mean() < 0.4 * 20 * 10, "early rounds drop the clearly wrong classes"
    pe.new_schedule()
    exhaustive = classify(pe, schedule="exhaustive")
    assert torch.equal(exhaustive.predictions, labels) and int(exhaustive.calls[0]) == 200


def test_pairs_are_shared_across_classes():
    """Every class of an image is scored on the same noisy input x_t (same t, same ε)."""
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, cond, taps=()):
            seen.append((x.clone(), t.clone(), cond.clone()))
            return x * self.w, {}

    pe = PairErrors(Spy(), make_process("flow"), _images(2), 3, pairs=4, autocast=False)
    classify(pe, schedule="exhaustive")
    x = torch.cat([s[0] for s in seen])
    cond = torch.cat([s[2] for s in seen])
    assert len(x) == 2 * 3 * 4
    by_input = {}
    for xi, c in zip(x, cond):
        by_input.setdefault(xi.numpy().tobytes(), set()).add(int(c))
    assert len(by_input) == 2 * 4 and all(classes == {0, 1, 2} for classes in by_input.values())


def test_fitted_time_weights_favour_informative_times_and_temperature_calibrates():
    pe, labels = _synthetic_pair_errors(30, 5, 8, margin=0.0)
    pe.errors[torch.arange(30), labels, 2:4] -= 0.5          # only pairs 2 and 3 carry the class
    w = fit_time_weights(pe, labels)
    assert w[2:4].sum() > 0.9
    noise = 0.1 * torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    scores = pe.errors.mean(-1) + noise           # overlapping classes: the likelihood's maximum is inside the grid
    tau = fit_temperature(scores, labels)

    def nll(t: float) -> float:
        return float(-probabilities(scores, t)[torch.arange(30), labels].log().mean())

    assert 1e-6 < tau < 100 and nll(tau) < min(nll(tau / 3), nll(3 * tau)), "τ is the likelihood's maximum"
    assert torch.allclose(probabilities(scores, tau).sum(1), torch.ones(30))


def test_probe_classify_and_features_commands(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *SMOKE, "--steps", 4, "--out", run)[0] == 0
    code, out, err = cli("classify", run, "--data", "digits", "--limit", 10, "--pairs", 3, "--out", tmp_path / "c.json")
    assert code == 0, err
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["n"] == 10 and result["calls_per_image"] == 30 and 0 <= result["accuracy"] <= 1
    code, out, err = cli("probe", run, "--data", "digits", "--backbones", "diffusion,pixels", "--t", "0.1,0.5",
                         "--no-progress", "--out", tmp_path / "p.json", "--heatmap", tmp_path / "p.png")
    assert code == 0, err
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert {r["backbone"] for r in rows} == {"diffusion", "pixels"} and (tmp_path / "p.png").stat().st_size > 1000
    assert "pixels" in out
    code, out, err = cli("features", run, "--data", "digits:test", "--blocks", "block1,block2", "--t", "0.2",
                         "--no-progress", "--out", tmp_path / "f.npz")
    assert code == 0, err
    import numpy as np

    with np.load(tmp_path / "f.npz") as f:
        assert {"block1@t=0.2", "block2@t=0.2"} <= set(f.keys())
    code, _, err = cli("features", run, "--blocks", "block99", "--out", tmp_path / "g.npz")
    assert code == 2 and "unknown block" in err


def test_probe_and_classify_take_labelled_data_of_the_users_own(cli, tmp_path):
    import numpy as np

    from diffrep.data import load_builtin

    run = tmp_path / "run"
    assert cli("train", *SMOKE, "--steps", 2, "--out", run)[0] == 0
    for split in ("train", "test"):
        d = load_builtin("digits", split)
        np.savez(tmp_path / f"{split}.npz", d.images.permute(0, 2, 3, 1).numpy(), d.labels.numpy())
    np.savez(tmp_path / "unlabelled.npz", load_builtin("digits", "test").images.permute(0, 2, 3, 1).numpy())
    code, out, err = cli("probe", run, "--data", tmp_path / "train.npz", "--test-data", tmp_path / "test.npz",
                         "--backbones", "pixels", "--out", tmp_path / "p.json")
    assert code == 0, err
    assert "linear probes: weight decay: 100%" in err and "linear probes: fit: 100%" in err     # progress shown
    (row,) = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert row["linear"] > 0.9          # pixels of the digits: the same numbers as the built-in split's
    code, out, err = cli("classify", run, "--data", tmp_path / "train.npz", "--n", 20, "--pairs", 2, "--no-progress",
                         "--out", tmp_path / "c.json")
    assert code == 0, err
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["n"] == 20 and result["data"].endswith("train.npz:test")     # the fixed 20% of --data
    code, _, err = cli("classify", run, "--data", tmp_path / "unlabelled.npz", "--no-progress")
    assert code == 2 and "has no labels" in err
