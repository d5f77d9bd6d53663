"""Backbones: the ``net(x, t, cond, taps) -> (out, hidden)`` contract and the size registry."""

from __future__ import annotations

import pytest
import torch

from diffrep.errors import DiffrepError
from diffrep.nets import MODELS, NULL_LABEL, build_net


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["DiT-T/4", "DiT-T/2", "UNet-S", "UNet-M"])
def test_forward_shape_and_taps(name):
    net = build_net(name, image_size=32, in_channels=3, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    taps = (net.tap_names[0], net.tap_names[len(net.tap_names) // 2])
    out, hidden = net(x, torch.tensor([10.0, 900.0]), torch.tensor([3, NULL_LABEL]), taps=taps)
    assert out.shape == x.shape
    assert set(hidden) == set(taps) and all(h.shape[0] == 2 for h in hidden.values())
    out2, none = net(x, torch.tensor([10.0, 900.0]), None)
    assert none == {} and out2.shape == x.shape


def test_dit_taps_are_token_sequences():
    net = build_net("DiT-T/4", 32, 1, 10)
    _, hidden = net(torch.randn(2, 1, 32, 32), torch.zeros(2), None, taps=("block3",))
    assert hidden["block3"].shape == (2, 64, 192)


def test_unknown_tap_and_model():
    net = build_net("UNet-S", 32, 1, 10)
    with pytest.raises(DiffrepError, match="unknown tap"):
        net(torch.randn(1, 1, 32, 32), torch.zeros(1), None, taps=("block99",))
    with pytest.raises(DiffrepError, match="DiT-S/4"):
        build_net("DiT-XXL/2", 32, 1, 10)


def test_sizes_follow_the_papers():
    """DiT-S is 33M parameters (DiT, Table 4 counts at 256²); the tiny size fits the 1–5M brief."""
    assert 30e6 < n_params(build_net("DiT-S/4", 32, 1, 10)) < 34e6
    assert 1e6 <= n_params(build_net("DiT-T/4", 32, 1, 10)) <= 5e6
    assert {"DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2", "UNet-S", "UNet-B"} <= set(MODELS)


def test_adaln_zero_starts_as_zero_output():
    net = build_net("DiT-T/4", 32, 1, 10)
    out, _ = net(torch.randn(2, 1, 32, 32), torch.ones(2), torch.tensor([1, 2]))
    assert out.abs().max() == 0


def test_null_label_is_its_own_embedding():
    net = build_net("UNet-S", 32, 1, 10)
    emb = net.y_embedder
    assert torch.equal(emb(torch.tensor([NULL_LABEL]), 1), emb(None, 1))
    assert not torch.equal(emb(torch.tensor([0]), 1), emb(None, 1))


@pytest.mark.parametrize("name", ["UNet-S", "DiT-T/4"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        net = build_net(name, 16, 1, 10, grad_checkpoint=flag).train()
        for p in net.parameters():       # leave the zero-initialised output layers
            p.data.add_(0.01 * torch.randn_like(p))
        out, _ = net(torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)), torch.ones(2),
                     torch.tensor([1, 2]))
        out.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model", ["DiT-T/4", "UNet-S"])
def test_taps_only_stops_after_the_deepest_tap_with_the_same_states(model):
    net = build_net(model, 16, 1, 10).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randn(2, 1, 16, 16), torch.ones(2), torch.tensor([3, 4])
    taps = (net.tap_names[0], net.tap_names[2])
    _, full = net(x, t, y, taps=taps)
    calls = []
    last = dict(net.named_modules())["blocks.5" if model.startswith("DiT") else "up.0"]
    last.register_forward_hook(lambda *a: calls.append(1))
    out, early = net(x, t, y, taps=taps, taps_only=True)
    assert out is None and early.keys() == full.keys() and not calls, "later blocks do not run"
    assert all(torch.equal(early[k], full[k]) for k in taps)


def test_nets_declare_their_capabilities_and_plugins_ask_for_them():
    from diffrep.nets.capabilities import capabilities_of, require
    from diffrep.plugins import CEP, CepOptions

    dit, unet = build_net("DiT-T/4", 16, 1, 10), build_net("UNet-S", 8, 1, 0, self_condition=-1)
    assert capabilities_of(dit) == {"token_grid", "label_embedding"}
    assert capabilities_of(unet) == {"self_condition"}
    with pytest.raises(DiffrepError, match="cep .* needs a net with label embedding: train a class-conditional"):
        CEP(CepOptions()).setup(unet, None, None, (1, 8, 8), (1, 8, 8))
    with pytest.raises(DiffrepError, match="needs a net with token grid"):
        require(unet, "token_grid", "umd", "use a DiT")


def test_attention_kernel_is_chosen_by_need_and_both_give_the_same_outputs(monkeypatch):
    """Math backend where gradients flow on the CPU, PyTorch's fastest kernel in inference; same outputs."""
    from diffrep.nets import common

    chosen = []
    real = common.sdpa_kernel

    def recording(backend):
        chosen.append(backend)
        return real(backend)

    monkeypatch.setattr(common, "sdpa_kernel", recording)
    torch.manual_seed(0)
    net = build_net("DiT-T/4", image_size=16, in_channels=1, num_classes=10).eval()
    for block in net.blocks:          # adaLN-Zero starts as the identity: open the gates so attention matters
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    x, t, y = torch.randn(4, 1, 16, 16), torch.rand(4) * 1000, torch.arange(4)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        with torch.autocast("cpu", dtype, enabled=dtype == torch.bfloat16):
            with torch.inference_mode():
                fast, _ = net(x, t, y)
            assert chosen == [], "inference runs the default kernel"
            slow, _ = net(x.requires_grad_(True), t, y)
            assert len(chosen) == len(net.blocks), "the math kernel where gradients flow"
        chosen.clear()
        x = x.detach()
        torch.testing.assert_close(fast.float(), slow.detach().float(), rtol=tol, atol=tol)
