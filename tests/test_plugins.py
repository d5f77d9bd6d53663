"""Training plug-ins: options, schedules, gradients only where they belong, export, combination, resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import SMOKE, assert_bit_identical, weights
from diffrep.checkpoint import latest_checkpoint
from diffrep.config import make_config, preset
from diffrep.errors import DiffrepError
from diffrep.nets import build_net
from diffrep.plugins import build_plugins, match_token_grid, parse_plugin, schedule_factor
from diffrep.rng import BatchDraws
from diffrep.runs import load_run
from diffrep.train import Trainer


def test_options_and_their_errors():
    name, options = parse_plugin("repa:encoder=reference,depth=3,weight=0.25")
    assert name == "repa" and options.depth == 3 and options.weight == 0.25
    with pytest.raises(DiffrepError, match="unknown plug-in 'rep'.*repa, sra, erw, cep, selfcond, umd, context"):
        parse_plugin("rep")
    with pytest.raises(DiffrepError, match="unknown option 'dept=3'.*depth=2"):
        parse_plugin("repa:dept=3")
    with pytest.raises(DiffrepError, match="depth=x must be an integer"):
        parse_plugin("repa:depth=x")
    with pytest.raises(DiffrepError, match="schedule"):
        parse_plugin("sra:schedule=cosine")
    with pytest.raises(DiffrepError, match="unknown option"):
        make_config(preset("smoke"), {"plugins": ["sra:depth=2"]})
    for spec, message in (("selfcond:source=0", "turns self-conditioning off"), ("umd:noisy_mask=1.5", r"\[0, 1\)"),
                          ("context:max_stride=0", "≥ 1"), ("erw:warmup_steps=-1", "≥ 0"),
                          ("erw:half_life=0", "schedule")):
        with pytest.raises(DiffrepError, match=message):
            build_plugins([spec])
    with pytest.raises(DiffrepError, match="needs a DiT"):
        Trainer(make_config(preset("smoke"), {"plugins": ["umd"]}), "unused")
    with pytest.raises(DiffrepError, match=r"block2, tapped by another plug-in, .*blocks 1…4.*repa:depth=5"):
        Trainer(make_config(preset("smoke"), {"model": "DiT-T/4", "plugins": ["umd", "repa"]}), "unused")


def test_repa_aligns_with_the_reference_encoder_of_the_training_data():
    from diffrep.evaluation.encoders import state_dict_sha256
    from diffrep.reference import load_reference

    (digits,) = build_plugins(["repa"], data="digits")
    (mnist,) = build_plugins(["repa:data=mnist5k"], data="digits")      # an explicit choice wins
    assert state_dict_sha256(digits._frozen[0].net.cnn) == state_dict_sha256(load_reference("digits"))
    assert state_dict_sha256(mnist._frozen[0].net.cnn) == state_dict_sha256(load_reference("mnist5k"))
    with pytest.raises(DiffrepError, match="repa: the reference encoder is trained on a built-in dataset.*encoder=dinov2"):
        build_plugins(["repa"], data="my_images.npz")


def test_schedules():
    assert schedule_factor("constant", 10**6) == 1.0
    assert schedule_factor("linear:100", 25) == 0.75 and schedule_factor("linear:100", 200) == 0.0
    assert schedule_factor("exp:50", 100) == pytest.approx(0.25)
    assert schedule_factor("step:10", 9) == 1.0 and schedule_factor("step:10", 10) == 0.0


def test_sra_losses_follow_their_definitions():
    from diffrep.plugins.sra import alignment_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    per_token = F.cosine_similarity(student, teacher, dim=-1)          # one per (sample, token)
    per_channel = F.cosine_similarity(student, teacher, dim=1)         # one per (sample, channel)
    assert per_token.shape == (2, 16) and per_channel.shape == (2, 8)
    torch.testing.assert_close(alignment_loss("cos", student, teacher), 1 - per_token.mean())
    torch.testing.assert_close(alignment_loss("cos-tokens", student, teacher), 1 - per_channel.mean())
    diff = (student - teacher).abs()
    sml1 = torch.where(diff < 0.05, 0.5 * diff**2 / 0.05, diff - 0.025).mean()
    torch.testing.assert_close(alignment_loss("sml1", student, teacher), sml1)
    assert alignment_loss("sml1", 2 * teacher, 2 * teacher) == 0 and alignment_loss("cos", 2 * teacher, teacher) < 1e-6
    with pytest.raises(DiffrepError, match="unknown loss 'l2'.*sml1"):
        parse_plugin("sra:loss=l2")


def test_token_grids_match_by_interpolation_or_fail_clearly():
    tokens = torch.arange(4.0).reshape(1, 4, 1)
    assert match_token_grid(tokens, 16).shape == (1, 16, 1)
    with pytest.raises(DiffrepError, match="square"):
        match_token_grid(torch.zeros(1, 6, 3), 16)


WITHOUT_TERMS = {"cep": lambda net: list(net.y_embedder.parameters()),      # the perturbed embedding still learns
                 "selfcond": lambda net: list(net.self_cond.parameters())}
"""Plug-ins with no loss term or head, and the net parameters each must train."""
GRADIENT_SPECS = ["repa:depth=2", "sra:student_block=2,teacher_block=3", "sra:loss=sml1", "erw:warmup_steps=0",
                  "context", "umd",
                  *WITHOUT_TERMS]


def test_every_registered_plugin_has_a_gradient_check():
    from diffrep.plugins import PLUGINS

    assert {s.split(":")[0] for s in GRADIENT_SPECS} == set(PLUGINS)


@pytest.mark.parametrize("spec", GRADIENT_SPECS)
def test_gradients_reach_the_student_and_head_only(tmp_path, spec):
    model = {"model": "DiT-T/4"} if spec == "umd" else {}
    cfg = make_config(preset("smoke"), {"steps": 1, "plugins": [spec], "precision": "fp32", **model})
    trainer = Trainer(cfg, tmp_path, progress=False)
    plugin = trainer.plugins[0]
    trainer.optimizer.step = lambda: None              # keep the gradients to inspect them
    trainer.optimizer.zero_grad = lambda set_to_none=True: None
    with torch.no_grad():       # off adaLN-Zero's zeros, where the output ignores the tokens (UMD's mask token)
        for p in trainer.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loss = trainer.train_step(0)
    assert torch.isfinite(loss)
    if spec in WITHOUT_TERMS:       # no loss term, no head: what they train is the net itself
        assert not [k for k in trainer.parts if k.startswith(f"{plugin.name}/")] and not list(plugin.parameters())
        trained = WITHOUT_TERMS[spec](trainer.net)
        assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    else:
        [term] = [v for k, v in trainer.parts.items() if k.startswith(f"{plugin.name}/")]
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
    assert all(f"{name}:" in out for name in ("erw", "selfcond", "umd", "context"))


RESUMED_TOGETHER = (["erw:warmup_steps=3", "selfcond", "context"], ["umd", "cep"])
"""Plug-in groups whose exact resume is checked below (repa and sra: in the test above)."""


def test_every_registered_plugin_has_an_exact_resume_check():
    from diffrep.plugins import PLUGINS

    checked = {"repa", "sra"} | {p.split(":")[0] for group in RESUMED_TOGETHER for p in group}
    assert checked == set(PLUGINS), f"add an exact-resume check for {sorted(set(PLUGINS) - checked)}"


def test_all_new_plugins_combine_and_resume_exactly(cli, tmp_path):
    dit = ["--model", "DiT-T/4"]
    for plugins in RESUMED_TOGETHER:
        spec = [a for p in plugins for a in ("--plugin", p)]
        full, part = tmp_path / f"full{len(plugins)}", tmp_path / f"part{len(plugins)}"
        assert cli("train", *SMOKE, *dit, *spec, "--steps", 8, "--ckpt-every", 4, "--out", full)[0] == 0
        assert cli("train", *SMOKE, *dit, *spec, "--steps", 4, "--ckpt-every", 4, "--out", part)[0] == 0
        code, _, err = cli("train", "--steps", 8, "--resume", "--no-progress", "--out", part)
        assert code == 0, err
        assert_bit_identical(weights(full), weights(part))
        record = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
        assert all(any(k.startswith(p.split(":")[0] + "/") for k in record) for p in plugins if p.split(":")[0] in ("erw", "context", "umd"))


@pytest.mark.parametrize("plugins", [("sra", "cep"), ("umd",)])
def test_plugin_draws_do_not_depend_on_micro_batches_and_a_resume_may_change_them(cli, tmp_path, plugins):
    """SRA's teacher times, CEP's perturbations and UMD's masks and branch are drawn for the global
    batch and sliced: 1 micro-batch, and 2 then (after a resume) 4, train the same weights up to rounding."""
    spec = [a for p in plugins for a in ("--plugin", p)]
    args = ["train", *SMOKE, "--model", "DiT-T/4", *spec, "--steps", 4, "--ckpt-every", 2, "--precision", "fp32"]
    assert cli(*args, "--out", tmp_path / "one")[0] == 0
    assert cli(*args, "--steps", 2, "--grad-accum", 2, "--out", tmp_path / "split")[0] == 0
    code, _, err = cli("train", "--steps", 4, "--grad-accum", 4, "--resume", "--no-progress", "--out", tmp_path / "split")
    assert code == 0, err
    a, b = ({**weights(run), **latest_checkpoint(run).weights("heads")} for run in (tmp_path / "one", tmp_path / "split"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=3e-5, rtol=1e-4)


def test_cep_perturbs_only_the_students_training_forward_and_resumes_exactly(cli, tmp_path):
    from diffrep.loss import Batch
    from diffrep.plugins import CEP, CepOptions

    net = build_net("UNet-S", 8, 1, 10)
    with torch.no_grad():                   # leave the zero-initialised layers, so the embedding shows
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cep = CEP(CepOptions(gamma=1.0))
    cep.setup(net, None, None, (1, 8, 8), (1, 8, 8))
    x, t, y = torch.randn(2, 1, 8, 8), torch.ones(2), torch.tensor([1, 2])

    def hidden() -> torch.Tensor:
        return net(x, t, y)[0]

    clean = hidden()
    batch = Batch(x, y, t, torch.zeros_like(x))
    cep.transform_batch(batch, 0, BatchDraws(torch.Generator().manual_seed(0), 2))
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


def test_compiled_nets_keep_their_plugin_hooks_beside_other_compiled_nets():
    """Dynamo does not guard on module hooks by default: a net with CEP's hook, compiled after a
    plain net of the same class in one process, reused the plain graph (no perturbation), and a
    plain net compiled after it took the hook's.  ``CompiledOrEager`` guards on hooks."""
    from diffrep.loss import Batch
    from diffrep.plugins import CEP, CepOptions
    from diffrep.runtime import CompiledOrEager

    x, t, y = torch.randn(2, 1, 8, 8), torch.ones(2), torch.tensor([1, 2])

    def make_net() -> torch.nn.Module:
        torch.manual_seed(0)
        net = build_net("DiT-T/4", 8, 1, 10)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return net

    def perturbed(cep: CEP, forward) -> torch.Tensor:
        cep.transform_batch(Batch(x, y, t, torch.zeros_like(x)), 0, BatchDraws(torch.Generator().manual_seed(0), 2))
        return forward(x, t, y)[0]

    with torch.no_grad():
        plain = make_net()
        first = CompiledOrEager(plain)(x, t, y)[0]
        hooked = make_net()
        cep = CEP(CepOptions(gamma=1.0))
        cep.setup(hooked, None, None, (1, 8, 8), (1, 8, 8))
        compiled_net = CompiledOrEager(hooked)
        compiled, eager = perturbed(cep, compiled_net), perturbed(cep, hooked)
        assert not compiled_net.failed, "compiled, not the eager fallback"
        assert not torch.allclose(eager, first, atol=1e-3), "the hook changes the output"
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
        cep.transform_batch(Batch(x, y, t, torch.zeros_like(x)), 0, BatchDraws(torch.Generator().manual_seed(0), 2))
        torch.testing.assert_close(CompiledOrEager(make_net())(x, t, y)[0], plain(x, t, y)[0], atol=1e-5, rtol=1e-4)


def test_selfcond_is_part_of_the_sampling_model_and_starts_as_the_plain_net(cli, tmp_path):
    for model in ("DiT-T/4", "UNet-S"):
        plain, conditioned = build_net(model, 8, 1, 10), build_net(model, 8, 1, 10, self_condition=-1)
        conditioned.load_state_dict(plain.state_dict(), strict=False)
        with torch.no_grad():
            for p in plain.parameters():
                p.add_(0.05 * torch.randn_like(p))
        conditioned.load_state_dict(plain.state_dict(), strict=False)
        x, t, y = torch.randn(2, 1, 8, 8), torch.ones(2), torch.tensor([1, 2])
        assert torch.equal(plain(x, t, y)[0], conditioned(x, t, y)[0]), "zero-initialised: the plain net at first"
    with pytest.raises(DiffrepError, match="middle block only"):
        build_net("UNet-S", 8, 1, 10, self_condition=1)
    assert cli("train", *SMOKE, "--plugin", "selfcond", "--steps", 3, "--out", tmp_path / "run")[0] == 0
    net, *_ = load_run(tmp_path / "run")
    assert any(k.startswith("self_cond.") for k in net.state_dict())
    assert net.self_cond.mlp[-1].weight.abs().sum() > 0, "it trains"
    assert cli("sample", tmp_path / "run", "--n", 4, "--steps", 2, "--no-progress", "--out", tmp_path / "s.npz")[0] == 0


def test_umd_drops_masked_tokens_and_restores_them_for_the_decoder():
    from diffrep.loss import Batch
    from diffrep.plugins import UMD, UmdOptions
    from diffrep.processes import make_process

    net = build_net("DiT-T/4", 16, 1, 10)
    umd = UMD(UmdOptions(clean_fraction=0.0, noisy_mask=0.5, decoder_blocks=2))
    umd.setup(net, None, make_process("flow"), (1, 16, 16), (1, 16, 16))
    seen = []
    for block in net.blocks:            # after UMD's hooks: records what each block receives
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    x = torch.randn(3, 1, 16, 16)
    batch = umd.transform_batch(Batch(x, None, torch.rand(3), torch.randn_like(x)), 0, BatchDraws(torch.Generator().manual_seed(0), 3))
    assert batch.loss_weight.shape == (3, 1, 16, 16) and batch.loss_weight.mean() == 0.5, "denoising loss on visible patches"
    net(x, batch.t, None)
    assert seen == [8] * 4 + [16] * 2, "4 of 16 tokens × 0.5 kept in the encoder, all 16 in the last 2 blocks"
    seen.clear()
    net.eval()(x, batch.t, None)
    assert seen == [16] * 6, "sampling-time forwards see every token"
    clean = UMD(UmdOptions(clean_fraction=0.999))
    clean.setup(build_net("DiT-T/4", 16, 1, 10), None, make_process("flow"), (1, 16, 16), (1, 16, 16))
    batch = clean.transform_batch(Batch(x, None, torch.rand(3), torch.randn_like(x)), 0, BatchDraws(torch.Generator().manual_seed(0), 3))
    assert torch.all(batch.t == 0) and batch.loss_weight.sum() == 0, "clean branch: t = 0, x0 loss on masked patches only"
    late = UMD(UmdOptions(unmask_after=10))
    late.setup(build_net("DiT-T/4", 16, 1, 10), None, make_process("flow"), (1, 16, 16), (1, 16, 16))
    plain = Batch(x, None, torch.rand(3), torch.randn_like(x))
    assert late.transform_batch(plain, 9, BatchDraws(torch.Generator(), 3)).loss_weight is not None
    assert late.transform_batch(plain, 10, BatchDraws(torch.Generator(), 3)) is plain and late.loss_terms(plain, None, 10, None) == {}


def test_context_targets_are_the_neighbouring_patches():
    from diffrep.loss import Batch, LossOutput
    from diffrep.plugins import Context, ContextOptions

    net = build_net("DiT-T/4", 16, 1, 10)
    context = Context(ContextOptions(max_stride=1, weight=1.0))
    context.setup(net, None, None, (1, 16, 16), (1, 16, 16))
    assert context.taps == ("block6",) and context.grid == 4 and context.patch_dim == 16
    x = torch.randn(2, 1, 16, 16)
    patches = torch.nn.functional.unfold(x, 4, stride=4).view(2, 16, 4, 4)          # patch (i, j) = patches[..., i, j]

    class Oracle(torch.nn.Module):                      # predicts every neighbour exactly, zeros outside
        def forward(self, tokens):
            out = torch.zeros(2, 4, 4, len(context.offsets), 16)
            for k, (dy, dx) in enumerate(context.offsets):
                for i in range(4):
                    for j in range(4):
                        if 0 <= i + dy < 4 and 0 <= j + dx < 4:
                            out[:, i, j, k] = patches[:, :, i + dy, j + dx]
            return out.flatten(3)

    context.decoder = Oracle()
    output = LossOutput(torch.zeros(()), taps={"block6": torch.zeros(2, 16, 8)})
    batch = Batch(x, None, torch.zeros(2), torch.zeros_like(x))
    assert context.loss_terms(batch, output, 0, None)["context"] == 0
    class Blank(torch.nn.Module):                       # wrong: predicts 0 for every neighbour
        def forward(self, tokens):
            return torch.zeros(2, 4, 4, len(context.offsets) * 16)

    context.decoder = Blank()
    missed = context.loss_terms(batch, output, 0, None)["context"]
    assert 0.5 < missed < 2, "the loss is the mean squared error of the neighbours' pixels (about 1 for N(0, 1))"


def test_umd_masks_activation_checkpointings_recomputation_alike(tmp_path):
    runs = {}
    for checkpointing in (False, True):
        cfg = make_config(preset("smoke"), {"model": "DiT-T/4", "plugins": ["umd:clean_fraction=0.3"], "steps": 3,
                                            "ckpt_every": 3, "precision": "fp32", "grad_checkpoint": checkpointing})
        Trainer(cfg, tmp_path / str(checkpointing), progress=False).run()
        runs[checkpointing] = weights(tmp_path / str(checkpointing))
    for k in runs[False]:
        torch.testing.assert_close(runs[True][k], runs[False][k], atol=1e-6, rtol=1e-5, msg=k)
