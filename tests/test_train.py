"""The trainer: exact resume (also after SIGKILL), Ctrl-C, NaN, accumulation, speed options, in-training evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import SMOKE, assert_bit_identical, run_cli_process, weights
from diffrep.checkpoint import latest_checkpoint, list_checkpoints
from diffrep.config import make_config, preset
from diffrep.errors import DiffrepError
from diffrep.plugins import Plugin
from diffrep.runs import build_model
from diffrep.runtime import CompiledOrEager, use_deterministic_kernels
from diffrep.train import StopRequest, Trainer, TrainingDiverged


def test_extending_a_run_is_bit_identical(cli, tmp_path):
    assert cli("train", *SMOKE, "--steps", 40, "--out", tmp_path / "full")[0] == 0
    assert cli("train", *SMOKE, "--steps", 20, "--out", tmp_path / "part")[0] == 0
    code, out, _ = cli("train", "--steps", 40, "--resume", "--no-progress", "--out", tmp_path / "part")
    assert code == 0 and "trained 40 steps" in out
    assert latest_checkpoint(tmp_path / "part").step == 40
    assert_bit_identical(weights(tmp_path / "full"), weights(tmp_path / "part"))
    full_state = latest_checkpoint(tmp_path / "full").state()["optimizer"]["state"]
    part_state = latest_checkpoint(tmp_path / "part").state()["optimizer"]["state"]
    assert all(torch.equal(full_state[k]["exp_avg"], part_state[k]["exp_avg"]) for k in full_state)
    steps = [line for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 8, "each logged step once"


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    args = ["train", *SMOKE, "--steps", 60, "--ckpt-every", 10, "--keep-last", 10]
    reference = run_cli_process(*args, "--out", tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    proc = subprocess.Popen([sys.executable, "-m", "diffrep", *map(str, args), "--out", tmp_path / "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed/checkpoints/step_0000020").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert latest_checkpoint(tmp_path / "killed").step < 60
    resumed = run_cli_process("train", "--resume", "--no-progress", "--out", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(weights(tmp_path / "ref"), weights(tmp_path / "killed"))


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "diffrep", "train", *SMOKE, "--steps", "100000", "--log-every", "1",
                             "--ckpt-every", "100000", "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 3):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.step >= 3


class InterruptDuring(Plugin):
    """A plug-in that sends this process SIGINT in the middle of a given step, as a Ctrl-C may."""

    name = "interrupt"

    def __init__(self, step: int):
        super().__init__()
        self.at = step

    def loss_terms(self, batch, output, step, ema):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return {}


def test_an_interrupt_during_the_last_step_lets_the_run_finish(tmp_path):
    cfg = make_config(preset("smoke"), {"steps": 3, "ckpt_every": 10})
    assert Trainer(cfg, tmp_path, plugins=[InterruptDuring(2)], progress=False).run() == 3


def test_a_signal_repeated_at_once_counts_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)          # as torchrun forwards what Slurm also sent: no KeyboardInterrupt
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_interrupt_during_a_step_checkpoints_that_step_whole(tmp_path):
    cfg = dict(preset("smoke"), steps=20, ckpt_every=10)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_config(cfg), tmp_path / "stopped", plugins=[InterruptDuring(2)], progress=False).run()
    assert latest_checkpoint(tmp_path / "stopped").step == 3
    assert latest_checkpoint(tmp_path / "stopped").state()["optimizer"]["state"][0]["step"] == 3
    Trainer(make_config(cfg, {"steps": 3}), tmp_path / "clean", progress=False).run()
    assert_bit_identical(weights(tmp_path / "clean"), weights(tmp_path / "stopped"))


class PoisonAfter(Plugin):
    """A plug-in whose loss term turns NaN from a given step on."""

    name = "poison"

    def __init__(self, step: int):
        super().__init__()
        self.from_step = step

    def loss_terms(self, batch, output, step, ema):
        return {"nan": torch.tensor(float("nan") if step >= self.from_step else 0.0)}


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = make_config(preset("smoke"), {"steps": 20, "ckpt_every": 5, "log_every": 5})
    trainer = Trainer(cfg, tmp_path, plugins=[PoisonAfter(7)], progress=False)
    with pytest.raises(TrainingDiverged, match="NaN/inf at step 8.*last good checkpoint is step 5"):
        trainer.run()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000005"]


def test_a_checkpoint_from_before_an_option_became_resumable_still_resumes(cli, tmp_path):
    """``grad_accum`` was part of the saved identity until it became resumable."""
    assert cli("train", *SMOKE, "--steps", 10, "--out", tmp_path)[0] == 0
    manifest = latest_checkpoint(tmp_path).path / "manifest.json"
    saved = json.loads(manifest.read_text())
    saved["identity"]["grad_accum"] = 1
    manifest.write_text(json.dumps(saved))
    code, _, err = cli("train", "--steps", 20, "--grad-accum", 2, "--resume", "--no-progress", "--out", tmp_path)
    assert code == 0, err
    assert latest_checkpoint(tmp_path).step == 20


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    cfg = dict(preset("smoke"), steps=3, ckpt_every=3, precision="fp32")
    Trainer(make_config(cfg), tmp_path / "full", progress=False).run()
    Trainer(make_config(cfg, {"grad_accum": 4}), tmp_path / "accum", progress=False).run()
    a, b = weights(tmp_path / "full"), weights(tmp_path / "accum")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_run_directory_contents(cli, tmp_path):
    assert cli("train", *SMOKE, "--grid-every", 10, "--out", tmp_path)[0] == 0
    assert {"config.yaml", "model.json", "metrics.jsonl", "checkpoints", "tb", "grids"} <= set(os.listdir(tmp_path))
    assert sorted(os.listdir(tmp_path / "grids")) == ["step_0000010.png", "step_0000020.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    ckpt = tmp_path / "checkpoints/step_0000020"
    assert sorted(os.listdir(ckpt)) == ["ema.safetensors", "manifest.json", "model.safetensors", "state.pt"]
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 20


def test_bad_config_options(tmp_path):
    with pytest.raises(DiffrepError, match="unknown config option"):
        make_config({"learning_rate": 1.0})
    with pytest.raises(DiffrepError, match="unknown model 'UNet-Z'"):
        make_config({"model": "UNet-Z"})


def test_ema_decay_warms_up_then_stays_at_the_configured_value():
    from diffrep.train import ema_decay_at

    cfg = make_config({"ema_decay": 0.999, "ema_start": 5})
    assert ema_decay_at(cfg, 4) == 0.0
    assert ema_decay_at(cfg, 5) == pytest.approx(0.1)
    assert ema_decay_at(cfg, 105) == pytest.approx(101 / 110)
    assert ema_decay_at(cfg, 100_000) == 0.999


def test_eval_every_logs_a_curve_without_changing_the_trajectory(cli, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("DIFFREP_CACHE", str(tmp_path / "cache"))
    assert cli("train", *SMOKE, "--out", tmp_path / "plain")[0] == 0
    code, _, err = cli("train", "--preset", "smoke", "--eval-every", 10, "--eval-samples", 40, "--eval-metrics",
                       "fd,prdc", "--eval-encoders", "pixels", "--out", tmp_path / "eval")
    assert code == 0, err
    assert err.count("sample: 100%") >= 2 and err.count("features pixels: 100%") >= 2   # each evaluation shows progress
    records = [json.loads(x) for x in (tmp_path / "eval" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert {"pixels/fd", "pixels/precision", "pixels/coverage"} <= records[-1].keys()
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 1000
    assert_bit_identical(weights(tmp_path / "plain"), weights(tmp_path / "eval"))
    code, _, err = cli("train", *SMOKE, "--eval-every", 10, "--eval-metrics", "fid", "--out", tmp_path / "bad")
    assert code == 2 and "--eval-metrics: unknown fid" in err


def test_speed_options_train_to_the_same_weights(tmp_path):
    """fused / foreach / for-loop AdamW and channels-last change kernels, not the update (float tolerance)."""
    base = make_config(preset("smoke"), {"precision": "fp32", "steps": 6, "ckpt_every": 6})
    runs = {}
    for name, option in (("fused", {"adamw_impl": "fused"}), ("foreach", {}), ("loop", {"adamw_impl": "for-loop"}),
                         ("nhwc", {"channels_last": True}), ("ckpt", {"grad_checkpoint": True})):
        Trainer(make_config(vars(base), option), tmp_path / name, progress=False).run()
        runs[name] = weights(tmp_path / name)
    for name in ("foreach", "loop", "nhwc", "ckpt"):
        for k in runs["fused"]:
            torch.testing.assert_close(runs[name][k], runs["fused"][k], atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")
    with pytest.raises(DiffrepError, match="U-Net"):
        Trainer(make_config(vars(base), {"model": "DiT-T/4", "channels_last": True}), tmp_path / "dit")


def test_compile_falls_back_to_eager_when_compiling_fails(tmp_path, monkeypatch):
    def broken_compile(module, **kw):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler (simulated)")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    base = make_config(preset("smoke"), {"precision": "fp32", "steps": 4, "ckpt_every": 4})
    Trainer(base, tmp_path / "eager", progress=False).run()
    trainer = Trainer(make_config(vars(base), {"compile": True}), tmp_path / "compiled", progress=False)
    with pytest.warns(UserWarning, match="torch.compile failed .*simulated"):
        trainer.run()
    assert trainer.forward_net.failed
    assert_bit_identical(weights(tmp_path / "eager"), weights(tmp_path / "compiled"))


def test_deterministic_selects_deterministic_kernels_and_may_change_on_resume(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kw: calls.append(mode))
    base = make_config(preset("smoke"), {"steps": 2, "ckpt_every": 2})
    Trainer(base, tmp_path / "run", progress=False).run()
    assert calls == []
    Trainer(make_config(vars(base), {"steps": 4, "deterministic": True}), tmp_path / "run", resume=True, progress=False).run()
    assert calls == [True]


def test_deterministic_makes_compiled_cpu_gradients_reproducible():
    """Inductor's CPU backward of an embedding adds the rows of one label in thread order (a
    scatter-add): two compiled quickstart runs drifted apart through the label table alone.  With
    ``--deterministic`` the compiled gradient is the same every time, and equal to eager."""
    torch.manual_seed(0)
    table, y, g = torch.nn.Embedding(11, 512), torch.randint(0, 11, (128,)), torch.randn(128, 512)
    eager = torch.autograd.grad((table(y) * g).sum(), table.weight)[0]
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        use_deterministic_kernels()
        loss = torch.compile(lambda: (table(y) * g).sum())
        for _ in range(10):
            table.weight.grad = None
            loss().backward()
            assert torch.equal(table.weight.grad, eager)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


@pytest.mark.bf16
def test_compiled_unet_gets_the_gradients_of_eager_under_bf16():
    """Inductor's layout optimisation (torch 2.13, CPU, bf16 autocast) gave zero gradients to every
    U-Net layer below the top level once a block, an upsampling and a skip concatenation met:
    `--compile` trained only the outer level.  ``CompiledOrEager`` switches that pass off."""
    torch.manual_seed(0)
    net = build_model(make_config(preset("quickstart"), {}), (1, 32, 32), 10)
    with torch.no_grad():                                    # the zero-initialised output layers too
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, t, y = torch.randn(4, 1, 32, 32), torch.rand(4), torch.randint(0, 10, (4,))

    def gradients(forward) -> dict[str, torch.Tensor]:
        net.zero_grad()
        with torch.autocast("cpu", torch.bfloat16):
            forward(x, t, y)[0].float().pow(2).mean().backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    compiled_net = CompiledOrEager(net)
    eager, compiled = gradients(net), gradients(compiled_net)
    assert not compiled_net.failed, "compiled, not the eager fallback"
    for k in eager:
        assert (compiled[k] - eager[k]).norm() <= 0.05 * eager[k].norm(), k


def test_channels_last_with_compile_is_refused_on_the_cpu(tmp_path):
    """In channels-last memory the same Inductor bug remains (layout optimisation off or on)."""
    cfg = make_config(preset("smoke"), {"channels_last": True, "compile": True})
    with pytest.raises(DiffrepError, match="--channels-last with --compile"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_objective_seam_replaces_the_denoising_loss(tmp_path):
    """A distillation objective plugs in here: the trainer minimises what the objective returns."""
    from diffrep.loss import LossOutput
    from diffrep.train.objectives import Denoising

    class Still:
        calls = 0

        def __call__(self, denoiser, batch, step, taps=(), draws=None):
            Still.calls += 1
            raw, hidden = denoiser.raw(batch.x0, batch.t, batch.cond, taps)
            return LossOutput(0.0 * raw.float().sum(), {"still": torch.zeros(())}, hidden, raw)

    cfg = make_config(preset("smoke"), {"steps": 3, "ckpt_every": 3, "precision": "fp32", "weight_decay": 0.0})
    still = Trainer(cfg, tmp_path / "still", progress=False, objective=Still())
    before = {k: v.clone() for k, v in still.net.state_dict().items()}
    still.run()
    assert Still.calls == 3 and all(torch.equal(before[k], v) for k, v in still.net.state_dict().items())
    Trainer(cfg, tmp_path / "default", progress=False).run()
    Trainer(cfg, tmp_path / "explicit", progress=False, objective=Denoising()).run()
    assert_bit_identical(weights(tmp_path / "default"), weights(tmp_path / "explicit"))
