"""Distillation: guidance-distilled and progressive students — their targets, their training, their runs, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from helpers import weights
from diffrep.config import make_config
from diffrep.distill.guidance import GuidanceDistillation
from diffrep.distill.progressive import ProgressiveDistillation
from diffrep.distill.spec import parse_distill
from diffrep.errors import DiffrepError
from diffrep.guidance.cfg import ClassifierFreeGuidance, DistilledGuidance
from diffrep.loss import Batch
from diffrep.nets import build_net
from diffrep.processes import make_process
from diffrep.rng import BatchDraws
from diffrep.runs import Run, load_run
from diffrep.samplers import sample_ddim

SHAPE = (1, 8, 8)


def teacher_args(*extra) -> list:
    return ["train", "--data", "digits", "--model", "UNet-XS", "--batch-size", 16, "--steps", 4, "--warmup", 1,
            "--ckpt-every", 4, "--grid-every", 0, "--keep-last", 0, "--no-progress", *extra]


def student_args(teacher, out, kind, *extra) -> list:
    return ["distill", teacher, "--kind", kind, "--out", out, "--steps", 4, "--ckpt-every", 2, "--grid-every", 0,
            "--batch-size", 16, "--no-progress", *extra]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from diffrep.cli import main

    run = tmp_path_factory.mktemp("distill") / "teacher"
    assert main([str(a) for a in teacher_args("--out", run)]) == 0
    return run


class Linear(nn.Module):
    """A flow or VP "net" whose x0 prediction is ``a·x_t`` (two DDIM steps then differ from one)."""

    def __init__(self, process, a: float):
        super().__init__()
        self.process, self.a = process, a

    def forward(self, x, t, cond=None, taps=(), **kw):
        t = (t / 1000.0).double()
        al, s = (f(t).view(-1, 1, 1, 1) for f in (self.process.alpha, self.process.sigma))
        x0 = self.a * x.double()
        raw = (x.double() - x0) / t.view(-1, 1, 1, 1) if self.process.name == "flow" else (x.double() - al * x0) / s
        return raw.float(), {}


def stub_run(net: nn.Module, process) -> Run:
    return Run(net, process, None, {"num_classes": 10}, None)


@pytest.mark.parametrize("model", ["UNet-XS", "DiT-T/4"])
def test_the_scale_input_starts_as_the_conditional_model_and_other_nets_refuse_it(model):
    torch.manual_seed(0)
    plain, student = build_net(model, 8, 1, 10), build_net(model, 8, 1, 10, guidance_embedding=True)
    for p in plain.parameters():            # zero-initialised outputs would hide every difference
        nn.init.normal_(p, std=0.05)
    missing, unexpected = student.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("w_embedder.") for k in missing)
    x, t, y = torch.randn(4, *SHAPE), torch.full((4,), 500.0), torch.arange(4)
    out = plain(x, t, y)[0]
    torch.testing.assert_close(student(x, t, y)[0], out)
    torch.testing.assert_close(student(x, t, y, guidance_scale=torch.full((4,), 2.5))[0], out)  # zero-initialised
    nn.init.normal_(student.w_embedder.embed.mlp[-1].weight)
    assert not torch.allclose(student(x, t, y, guidance_scale=torch.full((4,), 2.5))[0], out), "the scale is used"
    torch.testing.assert_close(student(x, t, y, guidance_scale=torch.ones(4))[0], student(x, t, y)[0])
    with pytest.raises(DiffrepError, match="not a guidance-distilled student"):
        plain(x, t, y, guidance_scale=torch.ones(4))


def test_guidance_distillation_regresses_onto_the_teachers_cfg_and_learns_it():
    torch.manual_seed(0)
    process = make_process("flow")
    teacher = build_net("UNet-XS", 8, 1, 10).eval()
    for p in teacher.parameters():          # an untrained net's conditional and unconditional outputs barely differ
        nn.init.normal_(p, std=0.05)
    nn.init.normal_(teacher.y_embedder.table.weight, std=1.0)
    nn.init.normal_(teacher.conv_out.weight, std=0.3)
    objective = GuidanceDistillation(stub_run(teacher, process), max_scale=3.0, autocast=False)
    student = build_net("UNet-XS", 8, 1, 10, guidance_embedding=True)
    objective.initialize(student)
    x0, y = torch.randn(16, *SHAPE), torch.arange(16) % 10
    batch = Batch(x0, y, torch.rand(16), torch.randn(16, *SHAPE))
    xt = process.corrupt(batch.x0, batch.t, batch.noise)
    scale = torch.full((16,), 2.0)
    cfg = ClassifierFreeGuidance(process.denoiser(teacher), 2.0)(xt, batch.t, y)
    x0_target, _ = process.predict(objective.target(xt, batch, scale), xt, batch.t)
    torch.testing.assert_close(x0_target, cfg.x0, atol=1e-5, rtol=1e-5)
    denoiser = process.denoiser(student)

    def held_out() -> float:
        with torch.no_grad():
            return objective(denoiser, batch, 0, (), BatchDraws(torch.Generator().manual_seed(99), 16)).total.item()

    first = held_out()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for step in range(40):
        loss = objective(denoiser, batch, step, (), BatchDraws(torch.Generator().manual_seed(step), 16)).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_out() < 0.5 * first, (first, held_out())
    assert student.w_embedder.embed.mlp[-1].weight.abs().sum() > 0, "the scale embedding learned"


@pytest.mark.parametrize("name", ["flow", "vp"])
def test_progressive_target_takes_x_t_where_two_teacher_steps_go_in_one(name):
    process = make_process(name)
    objective = ProgressiveDistillation(stub_run(Linear(process, 0.6), process), sampling_steps=4, autocast=False)
    x = torch.randn(3, *SHAPE)
    for i in range(4):
        t, end = objective.grid[2 * i], objective.grid[2 * i + 2]
        xt = process.alpha(t).float() * x + process.sigma(t).float() * torch.randn(3, *SHAPE)
        batch = Batch(x, torch.arange(3), torch.full((3,), float(t)), torch.zeros_like(x))
        target, weight = objective.target(xt, torch.full((3,), i), batch, {})
        two = sample_ddim(objective.teacher, xt, objective.grid[2 * i:2 * i + 3], cond=batch.cond)
        a, s, a_end, s_end = (float(f(v)) for f, v in ((process.alpha, t), (process.sigma, t),
                                                         (process.alpha, end), (process.sigma, end)))
        one = a_end * target + s_end * (xt - a * target) / s           # one DDIM step from x_t with x0 = x̃
        torch.testing.assert_close(one, two, atol=2e-4, rtol=1e-4)
        assert not torch.allclose(target, 0.6 * xt, atol=1e-3), "not the teacher's own one-step x0"
        torch.testing.assert_close(weight, torch.full((3,), max(a**2 / s**2, 1.0)), rtol=1e-5, atol=1e-6)


def test_guidance_student_samples_in_one_forward_per_step(teacher, tmp_path, cli):
    student = tmp_path / "g"
    assert cli(*student_args(teacher, student, "guidance", "--max-scale", 2.5))[0] == 0
    info = json.loads((student / "model.json").read_text())
    assert info["distill"] == {"kind": "guidance", "teacher": str(teacher.resolve()), "teacher_step": 4,
                               "scale_range": [1.0, 2.5]}
    loaded = load_run(student)
    calls = []
    loaded.net.register_forward_hook(lambda m, args, kw, out: calls.append((len(args[0]), kw.get("guidance_scale"))),
                                     with_kwargs=True)
    guided = DistilledGuidance(loaded.process.denoiser(loaded.net), 2.0, interval=(0.5, 1.0))
    x = torch.randn(4, *SHAPE)
    guided(x, 0.7, torch.arange(4))
    guided(x, 0.3, torch.arange(4))
    assert [n for n, _ in calls] == [4, 4], "one forward of the batch, not CFG's two"
    assert calls[0][1].tolist() == [2.0] * 4 and calls[1][1].tolist() == [1.0] * 4, "scale 1 outside the interval"
    code, out, err = cli("sample", student, "--n", 8, "--steps", 3, "--cfg", 4, "--out", tmp_path / "s.npz",
                         "--no-progress")
    assert code == 0 and "outside the 1…2.5" in err, err
    with np.load(tmp_path / "s.npz") as f:
        assert f["arr_0"].shape == (8, 8, 8, 1)
    torch.manual_seed(0)
    hidden = loaded.process.denoiser(loaded.net).hidden(x, torch.full((4,), 0.5), torch.arange(4), ("block2",))  # probes
    assert hidden["block2"].shape[0] == 4


def test_progressive_students_halve_and_sample_with_their_own_steps(teacher, tmp_path, cli):
    first, second = tmp_path / "p8", tmp_path / "p4"
    assert cli(*student_args(teacher, first, "progressive", "--sampling-steps", 8))[0] == 0
    assert cli(*student_args(first, second, "progressive"))[0] == 0
    info = json.loads((second / "model.json").read_text())["distill"]
    assert (info["kind"], info["sampler"], info["steps"], info["teacher"]) == ("progressive", "ddim", 4,
                                                                               str(first.resolve()))
    code, out, err = cli("sample", second, "--n", 4, "--out", tmp_path / "s.npz", "--no-progress")
    assert code == 0 and "(ddim, 4 net calls" in out and "warning" not in err, (out, err)
    code, out, err = cli("sample", second, "--n", 4, "--steps", 10, "--out", tmp_path / "t.npz", "--no-progress")
    assert code == 0 and "distilled for ddim at 4 steps" in err
    code, _, err = cli(*student_args(second, tmp_path / "p3", "progressive", "--sampling-steps", 3))
    assert code == 0 and "distilled for 4 DDIM steps" in err


def test_a_student_resumes_bit_for_bit(teacher, tmp_path, cli):
    assert cli(*student_args(teacher, tmp_path / "full", "progressive", "--precision", "fp32"))[0] == 0
    assert cli(*student_args(teacher, tmp_path / "half", "progressive", "--precision", "fp32", "--steps", 2))[0] == 0
    assert cli(*student_args(teacher, tmp_path / "half", "progressive", "--resume"))[0] == 0
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_distillation_input_is_one_line(teacher, tmp_path, cli):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(*student_args(tmp_path / "empty", tmp_path / "a", "guidance"))
    assert code == 2 and "is not a diffrep run" in err
    unconditional = tmp_path / "uncond"
    assert cli(*teacher_args("--unconditional", "--out", unconditional))[0] == 0
    code, _, err = cli(*student_args(unconditional, tmp_path / "b", "guidance"))
    assert code == 2 and "is unconditional" in err and not (tmp_path / "b").exists()
    no_dropout = tmp_path / "nodrop"
    assert cli(*teacher_args("--label-dropout", 0, "--out", no_dropout))[0] == 0
    code, _, err = cli(*student_args(no_dropout, tmp_path / "c", "guidance"))
    assert code == 2 and "without label dropout" in err
    guided = tmp_path / "g"
    assert cli(*student_args(teacher, guided, "guidance", "--steps", 2))[0] == 0
    code, _, err = cli(*student_args(guided, tmp_path / "d", "guidance"))
    assert code == 2 and "already guidance-distilled" in err
    one = tmp_path / "one"
    assert cli(*student_args(teacher, one, "progressive", "--sampling-steps", 1, "--steps", 2))[0] == 0
    code, _, err = cli(*student_args(one, tmp_path / "e", "progressive"))
    assert code == 2 and "nothing left to halve" in err
    code, _, err = cli(*teacher_args("--data", "mnist5k", "--distill", f"guidance:teacher={teacher},step=4,max_scale=2",
                                     "--out", tmp_path / "f"))
    assert code == 2 and "distil on the teacher's data" in err
    code, _, err = cli(*student_args(teacher, guided, "progressive", "--resume"))
    assert code == 2 and "holds a guidance student, not a progressive one" in err
    copy, half = tmp_path / "teacher", tmp_path / "half"
    shutil.copytree(teacher, copy)
    assert cli(*student_args(copy, half, "progressive", "--steps", 2))[0] == 0
    shutil.rmtree(copy / "checkpoints" / "step_0000004")
    code, _, err = cli(*student_args(copy, half, "progressive", "--resume"))
    assert code == 2 and "keeps no checkpoint of step 4" in err, err
    for bad, message in (("sharpen:teacher=x", "unknown kind"), ("guidance:teacher=x,step=1", "needs max_scale="),
                         ("guidance:teacher=x,step=1,max_scale=1", "above 1"),
                         ("progressive:teacher=x,steps=2", "is not one of")):
        with pytest.raises(DiffrepError, match=message):
            parse_distill(bad)
    with pytest.raises(DiffrepError, match="above 1"):
        make_config({"distill": "guidance:teacher=x,step=1,max_scale=0.5"})
