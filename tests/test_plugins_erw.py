"""ERW's warm-up (arXiv 2504.10188): what it transfers, and that it trains as the main loop does."""

from __future__ import annotations

import pytest
import torch

from diffrep.config import make_config, preset
from diffrep.nets import build_net
from diffrep.plugins import WarmStart
from diffrep.train import Trainer


def test_erw_transfers_exactly_the_warmed_up_tensors(tmp_path):
    cfg = make_config(preset("smoke"), {"model": "DiT-T/4", "plugins": ["erw:depth=2,warmup_steps=3"], "precision": "fp32"})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)   # a fresh run: the warm-up has run
    erw = trainer.plugins[0]
    assert trainer.net.state_dict().keys() == trainer.ema.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(trainer.net.state_dict().values(), trainer.ema.state_dict().values()))
    assert len(erw.warmup_align) == 2 and erw.warmup_align[1] < erw.warmup_align[0], "the warm-up aligns"

    torch.manual_seed(0)
    net = build_net("DiT-T/4", 8, 1, 10)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    warm = WarmStart(trainer.warmup_batch, lambda params: torch.optim.AdamW(params, lr=1e-3), False)
    student, projector = erw.warm_up(net, warm)
    erw.transfer(student, projector, net)
    after = net.state_dict()
    assert {k.split(".")[0] for k in erw.transferred} == {"x_embedder", "t_embedder", "y_embedder", "blocks"}
    assert {k.split(".")[1] for k in erw.transferred if k.startswith("blocks.")} == {"0", "1"}, "blocks 1…depth"
    for k in after:
        if k in erw.transferred:
            assert torch.equal(after[k], student.state_dict()[k]) and not torch.equal(after[k], initial[k]), k
        else:
            assert torch.equal(after[k], initial[k]), f"{k} is not warmed up, so it keeps its initialisation"
    assert all(torch.equal(a, b) for a, b in zip(erw.projector.state_dict().values(), projector.state_dict().values()))


def test_erw_warm_up_clips_and_warms_the_learning_rate_up_as_the_main_loop(tmp_path, monkeypatch):
    """The official warm-up clips gradients at 1.0; diffrep's uses the run's clipping and learning-rate warm-up."""
    from diffrep import distributed
    from diffrep.train import loop

    clipped, lrs = [], []
    real_clip, real_make = distributed.clip_grad_norm, loop.make_optimizer
    monkeypatch.setattr(distributed, "clip_grad_norm", lambda params, c: clipped.append(c) or real_clip(params, c))

    def recording(*args):
        optimizer = real_make(*args)
        step = optimizer.step
        optimizer.step = lambda *a, **k: lrs.append(optimizer.param_groups[0]["lr"]) or step(*a, **k)
        return optimizer

    monkeypatch.setattr(loop, "make_optimizer", recording)
    cfg = make_config(preset("smoke"), {"model": "DiT-T/4", "plugins": ["erw:depth=2,warmup_steps=3"], "precision": "fp32",
                                        "warmup": 10, "grad_clip": 0.5})
    Trainer(cfg, tmp_path / "run", progress=False)      # a fresh run: the warm-up runs in the constructor
    assert clipped == [0.5] * 3
    assert lrs == pytest.approx([cfg.lr * k / 10 for k in (1, 2, 3)])
