"""Training plug-ins: options, schedules, gradients only where they belong, export, combination, resume."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SMOKE
from diffrep.checkpoint import latest_checkpoint
from diffrep.config import make_config, preset
from diffrep.errors import DiffrepError
from diffrep.nets import build_net
from diffrep.plugins import match_token_grid, parse_plugin, schedule_factor
from diffrep.trainer import Trainer, load_run
from test_trainer import assert_bit_identical, weights


def test_options_and_their_errors():
    name, options = parse_plugin("repa:encoder=reference,depth=3,weight=0.25")
    assert name == "repa" and options.depth == 3 and options.weight == 0.25
    with pytest.raises(DiffrepError, match="unknown plug-in 'rep'.*repa, sra, cep"):
        parse_plugin("rep")
    with pytest.raises(DiffrepError, match="unknown option 'dept=3'.*depth=2"):
        parse_plugin("repa:dept=3")
    with pytest.raises(DiffrepError, match="depth=x must be an integer"):
        parse_plugin("repa:depth=x")
    with pytest.raises(DiffrepError, match="schedule"):
        parse_plugin("sra:schedule=cosine")
    with pytest.raises(DiffrepError, match="unknown option"):
        make_config(preset("smoke"), {"plugins": ["sra:depth=2"]})


def test_schedules():
    assert schedule_factor("constant", 10**6) == 1.0
    assert schedule_factor("linear:100", 25) == 0.75 and schedule_factor("linear:100", 200) == 0.0
    assert schedule_factor("exp:50", 100) == pytest.approx(0.25)
    assert schedule_factor("step:10", 9) == 1.0 and schedule_factor("step:10", 10) == 0.0


def test_token_grids_match_by_interpolation_or_fail_clearly():
    tokens = torch.arange(4.0).reshape(1, 4, 1)
    assert match_token_grid(tokens, 16).shape == (1, 16, 1)
    with pytest.raises(DiffrepError, match="square"):
        match_token_grid(torch.zeros(1, 6, 3), 16)


@pytest.mark.parametrize("spec", ["repa:depth=2", "sra:student_block=2,teacher_block=3"])
def test_gradients_reach_the_student_and_head_only(tmp_path, spec):
    cfg = make_config(preset("smoke"), {"steps": 1, "plugins": [spec], "precision": "fp32"})
    trainer = Trainer(cfg, tmp_path, progress=False)
    plugin = trainer.plugins[0]
    trainer.optimizer.step = lambda: None              # keep the gradients to inspect them
    trainer.optimizer.zero_grad = lambda set_to_none=True: None
    loss = trainer.train_step(0)
    assert torch.isfinite(loss)
    term = trainer.parts[f"{plugin.name}/align"]
    assert torch.isfinite(term) and term != 0
    head_grads = [p.grad for p in plugin.parameters()]
    assert head_grads and all(g is not None and g.abs().sum() > 0 for g in head_grads)
    assert all(p.grad is None for p in trainer.ema.parameters()), "the EMA teacher gets no gradient"
    if plugin.name == "repa":
        encoder = plugin._frozen[0]
        assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
        assert not any(k.startswith("_frozen") or "encoder" in k for k in plugin.state_dict())


def test_two_plugins_train_together_resume_exactly_and_stay_out_of_the_export(cli, tmp_path):
    plugins = ["--plugin", "repa:depth=2,weight=0.5", "--plugin", "sra:student_block=2,teacher_block=3"]
    assert cli("train", *SMOKE, *plugins, "--steps", 10, "--ckpt-every", 5, "--out", tmp_path / "full")[0] == 0
    assert cli("train", *SMOKE, *plugins, "--steps", 5, "--ckpt-every", 5, "--out", tmp_path / "part")[0] == 0
    code, _, err = cli("train", "--steps", 10, "--resume", "--no-progress", "--out", tmp_path / "part")
    assert code == 0, err
    assert_bit_identical(weights(tmp_path / "full"), weights(tmp_path / "part"))
    heads_full = latest_checkpoint(tmp_path / "full").weights("heads")
    heads_part = latest_checkpoint(tmp_path / "part").weights("heads")
    assert_bit_identical(heads_full, heads_part)
    record = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"repa/align", "sra/align"} <= record.keys()
    net, *_ = load_run(tmp_path / "full")
    fresh = build_net("UNet-S", 8, 1, 10)
    assert net.state_dict().keys() == fresh.state_dict().keys(), "heads are not part of the sampling model"
    code, _, err = cli("train", "--steps", 12, "--resume", "--plugin", "sra", "--no-progress", "--out", tmp_path / "part")
    assert code == 2 and "plugins" in err


def test_plugins_command_lists_options(cli):
    code, out, _ = cli("plugins")
    assert code == 0 and "repa:" in out and "depth=2" in out and "time_gap=0.2" in out


def test_cep_perturbs_only_the_students_training_forward_and_resumes_exactly(cli, tmp_path):
    from diffrep.loss import Batch
    from diffrep.plugins import CEP, CepOptions

    net = build_net("UNet-S", 8, 1, 10)
    with torch.no_grad():                   # leave the zero-initialised layers, so the embedding shows
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cep = CEP(CepOptions(gamma=1.0))
    cep.setup(net, None, None, (1, 8, 8))
    x, t, y = torch.randn(2, 1, 8, 8), torch.ones(2), torch.tensor([1, 2])

    def hidden() -> torch.Tensor:
        return net(x, t, y)[0]

    clean = hidden()
    batch = Batch(x, y, t, torch.zeros_like(x))
    cep.transform_batch(batch, 0, torch.Generator().manual_seed(0))
    net.eval()
    assert torch.equal(hidden(), clean), "never in eval mode"
    net.train()
    assert not torch.equal(hidden(), clean), "training forward perturbed"
    assert torch.equal(hidden(), clean), "one draw per micro-batch, then clean"
    spec = ["--plugin", "cep:gamma=0.5"]
    assert cli("train", *SMOKE, *spec, "--steps", 10, "--ckpt-every", 5, "--out", tmp_path / "full")[0] == 0
    assert cli("train", *SMOKE, *spec, "--steps", 5, "--ckpt-every", 5, "--out", tmp_path / "part")[0] == 0
    assert cli("train", "--steps", 10, "--resume", "--no-progress", "--out", tmp_path / "part")[0] == 0
    assert_bit_identical(weights(tmp_path / "full"), weights(tmp_path / "part"))
