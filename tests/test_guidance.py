"""Guidance beyond CFG: the --guidance spelling, autoguidance, ADM classifier guidance and their bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrep.errors import DiffrepError
from diffrep.guidance import Autoguidance, ClassifierGuidance, NoisyClassifier
from diffrep.guidance.classifier import save_classifier
from diffrep.guidance.spec import parse_guidance
from diffrep.processes import Prediction, make_process

SHAPE = (1, 8, 8)


class Fixed:
    """A denoiser that predicts a fixed x0 (ε follows from x_t)."""

    def __init__(self, x0: torch.Tensor, process):
        self.x0, self.process = x0, process

    def __call__(self, x, t, cond=None, taps=()):
        t = torch.full((len(x),), float(t))
        a, s = (f(t).view(-1, 1, 1, 1) for f in (self.process.alpha, self.process.sigma))
        return Prediction(self.x0.expand_as(x), (x - a * self.x0) / s, {})


def test_one_spelling_parses_every_kind_and_refuses_the_rest():
    assert parse_guidance("cfg:1.5") == ("cfg", {"scale": 1.5})
    assert parse_guidance("cfg:scale=2,lo=0.1,hi=0.9") == ("cfg", {"scale": 2.0, "lo": 0.1, "hi": 0.9})
    assert parse_guidance("auto:ckpt=400,w=2") == ("auto", {"ckpt": 400, "w": 2.0})
    assert parse_guidance("auto:run=runs/x@400") == ("auto", {"run": "runs/x@400"})
    assert parse_guidance("classifier:path=c.safetensors,scale=3") == ("classifier", {"path": "c.safetensors",
                                                                                      "scale": 3.0})
    for bad, message in (("ppap:scale=1", "unknown kind"), ("auto:weight=2", "auto takes w=, ckpt=, run="),
                         ("auto:ckpt=x", "not a int"), ("cfg:scale=nan", "must be finite")):
        with pytest.raises(DiffrepError, match=message):
            parse_guidance(bad)


@pytest.mark.parametrize("process", ["flow", "vp", "edm"])
def test_autoguidance_extrapolates_from_the_weak_model(process):
    p = make_process(process)
    strong, weak = Fixed(torch.ones(1, *SHAPE), p), Fixed(torch.zeros(1, *SHAPE), p)
    x, t = torch.randn(2, *SHAPE), float(p.t_max) / 2
    guided = Autoguidance(strong, weak, 2.5)(x, t)
    torch.testing.assert_close(guided.x0, torch.full_like(x, 2.5))
    a, s = p.alpha(torch.tensor([t])), p.sigma(torch.tensor([t]))
    torch.testing.assert_close(guided.eps, (x - a * guided.x0) / s, rtol=1e-4, atol=1e-4)
    assert Autoguidance(strong, weak, 1.0)(x, t).x0.eq(1).all()


@pytest.mark.parametrize("process", ["flow", "vp", "edm"])
def test_classifier_guidance_shifts_by_the_scaled_gradient_of_log_p(process, monkeypatch):
    """With logits (0, z), z = v·x (input scaled as the net sees it), ∇ log p(1|x) = sigmoid(−z)·c·v."""
    import diffrep.guidance.classifier as module

    p = make_process(process)
    v = torch.randn(SHAPE)
    monkeypatch.setattr(module, "classifier_logits", lambda clf, proc, x, t: torch.stack(
        [torch.zeros(len(x)), (x * proc.net_input_scale(t).view(-1, 1, 1, 1) * v).flatten(1).sum(1)], 1))
    base = Fixed(torch.zeros(1, *SHAPE), p)
    x, t, scale = torch.randn(3, *SHAPE), float(p.t_max) * 0.4, 2.0
    cond = torch.tensor([1, 1, -1])
    guided = ClassifierGuidance(base, NoisyClassifier(1, 2), scale)(x, t, cond)
    tt = torch.full((3,), t)
    c = p.net_input_scale(tt).view(-1, 1, 1, 1)
    z = (x * c * v).flatten(1).sum(1).view(-1, 1, 1, 1)
    grad = torch.sigmoid(-z) * c * v
    a, s = p.alpha(tt).view(-1, 1, 1, 1), p.sigma(tt).view(-1, 1, 1, 1)
    plain = base(x, t)
    torch.testing.assert_close(guided.x0[:2], plain.x0[:2] + scale * s[:2] ** 2 / a[:2] * grad[:2], rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(guided.eps[:2], plain.eps[:2] - scale * s[:2] * grad[:2], rtol=1e-4, atol=1e-5)
    assert torch.equal(guided.x0[2], plain.x0[2]), "the null label is not pulled"
    at_noise = ClassifierGuidance(base, NoisyClassifier(1, 2), scale)(x, p.t_max, cond)
    assert torch.isfinite(at_noise.x0).all() and torch.isfinite(at_noise.eps).all(), "finite at pure noise"
    expert = ClassifierGuidance(base, NoisyClassifier(1, 2), scale, interval=(0.0, 0.1 * p.t_max))
    assert torch.equal(expert(x, t, cond).x0, plain.x0), "outside its noise range an expert does not pull"
    torch.testing.assert_close(ClassifierGuidance(base, NoisyClassifier(1, 2), scale, interval=(0.0, p.t_max))(
        x, t, cond).x0, guided.x0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from diffrep.cli import main

    out = tmp_path_factory.mktemp("guided") / "run"
    assert main(["train", "--preset", "smoke", "--keep-last", "0", "--out", str(out), "--no-progress"]) == 0
    return out


def samples(cli, run, out, *args):
    code, stdout, err = cli("sample", run, "--n", 20, "--steps", 4, "--no-progress", "--out", out, *args)
    assert code == 0, err
    return np.load(out)["arr_0"]


def test_guided_sampling_from_the_command_line(run, tmp_path, cli):
    clf = tmp_path / "clf.safetensors"
    code, out, err = cli("train-classifier", run, "--steps", 20, "--batch-size", 32, "--out", clf, "--no-progress")
    assert code == 0 and "test accuracy" in out, err
    plain = samples(cli, run, tmp_path / "p.npz")
    guided = samples(cli, run, tmp_path / "c.npz", "--guidance", f"classifier:path={clf},scale=4")
    again = samples(cli, run, tmp_path / "c2.npz", "--guidance", f"classifier:path={clf},scale=4")
    auto = samples(cli, run, tmp_path / "a.npz", "--guidance", "auto:ckpt=10,w=2")
    assert np.array_equal(guided, again) and not np.array_equal(guided, plain) and not np.array_equal(auto, plain)
    assert guided.std() > 0.5 * plain.std(), "guided samples are images, not a constant (NaN) field"
    both = samples(cli, run, tmp_path / "b.npz", "--cfg", "2", "--guidance", "auto:ckpt=10,w=2")
    assert not np.array_equal(both, auto)
    experts = []
    for lo, hi in ((0, 0.5), (0.5, 1)):
        experts.append(tmp_path / f"expert{lo}.safetensors")
        code, out, err = cli("train-classifier", run, "--steps", 10, "--batch-size", 16, "--t-range", f"{lo},{hi}",
                             "--out", experts[-1], "--no-progress")
        assert code == 0, err
    ppap = samples(cli, run, tmp_path / "x.npz", "--guidance", f"classifier:path={experts[0]},scale=4,hi=0.5",
                   "--guidance", f"classifier:path={experts[1]},scale=4,lo=0.5")
    assert not np.array_equal(ppap, plain)
    code, _, err = cli("train-classifier", run, "--t-range", "0.5,2", "--out", tmp_path / "bad.safetensors")
    assert code == 2 and "0 ≤ lo < hi ≤ 1" in err
    code, _, err = cli("train-classifier", run, "--steps", 2, "--out", clf)
    assert code == 2 and "--overwrite" in err


def test_bad_guidance_is_one_line(run, tmp_path, cli):
    args = ["sample", run, "--n", 4, "--steps", 2, "--out", tmp_path / "s.npz", "--guidance"]
    code, _, err = cli(*args, "auto:ckpt=15")
    assert code == 2 and "keeps no checkpoint of step 15" in err and "10, 20" in err
    code, _, err = cli(*args, "auto:ckpt=20")
    assert code == 2 and "not earlier" in err
    code, _, err = cli(*args, "auto")
    assert code == 2 and "give ckpt=STEP" in err
    wrong = tmp_path / "wrong.safetensors"
    save_classifier(NoisyClassifier(1, 3), {"x0_shape": [1, 8, 8], "process": "x"}, wrong)
    code, _, err = cli(*args, f"classifier:path={wrong}")
    assert code == 2 and "classes 3 ≠ the run's 10" in err and "process" in err
    code, _, err = cli(*args, f"classifier:path={tmp_path / 'none.safetensors'}")
    assert code == 2 and "not found" in err
    code, _, err = cli(*args, "classifier:path=x.safetensors", "--labels", "none")
    assert code == 2 and "steers towards class labels" in err
    other = tmp_path / "other"
    assert cli("train", "--preset", "smoke", "--data", other_data(tmp_path), "--out", other,
               "--no-progress")[0] == 0
    code, _, err = cli(*args, f"auto:run={other}")
    assert code == 2 and "x0 shape [1, 16, 16] ≠ [1, 8, 8]" in err
    assert not (tmp_path / "s.npz").exists()


def other_data(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, arr_0=np.random.default_rng(0).integers(0, 255, (40, 16, 16, 1), dtype=np.uint8))
    return path


def test_elucd_smooths_relus_and_its_schedule_is_the_sine_bump():
    from diffrep.guidance.classifier import CleanClassifier
    from diffrep.guidance.elucd import ddpm_fraction, sine_bump, smoothed

    clf = CleanClassifier(1, 10)
    soft = smoothed(clf, 3.0)
    assert not any(isinstance(m, torch.nn.ReLU) for m in soft.modules())
    assert [m.beta for m in soft.modules() if isinstance(m, torch.nn.Softplus)] == [3.0] * 4
    assert sum(isinstance(m, torch.nn.ReLU) for m in clf.modules()) == 4, "the original is untouched"
    u = torch.linspace(0, 1, 11)
    torch.testing.assert_close(ddpm_fraction(torch.exp(-(0.1 * u + 9.95 * u ** 2))), u, atol=1e-4, rtol=0)
    vp = make_process("vp")
    m = sine_bump(vp, torch.tensor([1e-3, 0.1, 0.5, 1.0]), 0.3)
    assert m[0] < 1.2 and 1.5 < m[1] < 2.0 and 1.3 < m[2] < m[1] and abs(m[3] - 1) < 0.01
    assert torch.equal(sine_bump(vp, torch.tensor([0.1, 0.5]), 0.0), torch.ones(2))


@pytest.mark.parametrize("process", ["flow", "edm"])
def test_elucd_steps_along_the_calibrated_objective_of_x0_only(process):
    from diffrep.guidance.elucd import EluCDGuidance, sine_bump

    p = make_process(process)
    torch.manual_seed(0)
    weight = torch.randn(4, int(np.prod(SHAPE)))
    classifier = lambda x0: x0.flatten(1) @ weight.T      # noqa: E731 - a linear classifier of x̂0
    base = Fixed(torch.randn(1, *SHAPE), p)
    x, t, cond = torch.randn(2, *SHAPE), float(p.t_max) * 0.3, torch.tensor([2, 0])
    guided = EluCDGuidance(base, classifier, scale=1.5)(x, t, cond)
    f = base.x0.flatten(1) @ weight.T
    grad = weight[cond] - 0.5 * torch.softmax(0.5 * f, 1) @ weight     # ∇ [f_y − logsumexp(0.5·f)]
    tt = torch.full((2,), t)
    a, s = p.alpha(tt).view(-1, 1), p.sigma(tt).view(-1, 1)
    expected = base.x0.flatten(1) + 1.5 * sine_bump(p, tt, 0.3).view(-1, 1) * s ** 2 / a * grad
    torch.testing.assert_close(guided.x0.flatten(1), expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_elucd_from_the_command_line(run, tmp_path, cli):
    clean = tmp_path / "clean.safetensors"
    code, out, err = cli("train-classifier", run, "--clean", "--steps", 20, "--batch-size", 32, "--out", clean,
                         "--no-progress")
    assert code == 0 and "at t=0" in out, err
    plain = samples(cli, run, tmp_path / "p.npz")
    guided = samples(cli, run, tmp_path / "e.npz", "--guidance", f"elucd:path={clean},scale=4,beta=5")
    assert not np.array_equal(guided, plain)
    noisy = tmp_path / "noisy.safetensors"
    assert cli("train-classifier", run, "--steps", 2, "--out", noisy, "--no-progress")[0] == 0
    code, _, err = cli("sample", run, "--n", 4, "--out", tmp_path / "x.npz", "--guidance", f"elucd:path={noisy}")
    assert code == 2 and "is a noisy classifier; this guidance needs a clean one" in err
