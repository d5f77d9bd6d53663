"""The FID Inception-v3 (arXiv 1706.08500 / 1512.00567): architecture, key layout, loading and its errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffrep.evaluation.encoders import inception
from diffrep.evaluation.encoders.inception import FIDInceptionV3, load_fid_inception
from diffrep.errors import DiffrepError

# Tensors in pytorch-fid's pt_inception-2015-12-05-6726825d.pth.  Conv+BN units: stem 5 (Conv2d_1a … 4a),
# Mixed_5b/c/d 3 × 7, Mixed_6a 4, Mixed_6b/c/d/e 4 × 10, Mixed_7a 6, Mixed_7b/c 2 × 9  →  94 units, each with
# 5 tensors (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var; no num_batches_tracked),
# plus fc.weight and fc.bias:  94 × 5 + 2 = 472.
OFFICIAL_TENSORS = 472
# torchvision's inception_v3 has 27,161,264 parameters; less AuxLogits (3,326,696), plus 8 more fc rows
# (1008 − 1000 logits, 2049 each):  27,161,264 − 3,326,696 + 16,392 = 23,850,960.
OFFICIAL_PARAMETERS = 23_850_960


def randomize(net: FIDInceptionV3) -> None:
    """Scale-preserving random weights and non-trivial BatchNorm statistics, so every tensor matters."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, inception.FrozenBatchNorm2d):
            for tensor, low, high in [(module.weight, 0.5, 1.5), (module.bias, -0.1, 0.1),
                                      (module.running_mean, -0.1, 0.1), (module.running_var, 0.5, 1.5)]:
                nn.init.uniform_(tensor, low, high)


@pytest.fixture(scope="module")
def reference() -> tuple[FIDInceptionV3, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random net, a batch of 2 inputs in [-1, 1] and the net's outputs on it."""
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    randomize(net)
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        return net, x, net(x)


def test_output_shapes_finite_and_float32_under_autocast(reference):
    net, x, (pool3, logits) = reference
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool3).all() and torch.isfinite(logits).all() and pool3.abs().max() > 1e-3
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        pool3_bf16, logits_bf16 = net(x)
    assert pool3_bf16.dtype == logits_bf16.dtype == torch.float32
    torch.testing.assert_close(pool3_bf16, pool3, rtol=0.1, atol=0.05 * pool3.abs().max().item())


def test_state_dict_has_the_official_layout(reference):
    state = reference[0].state_dict()
    for key in ["Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_mean", "Mixed_5b.branch1x1.conv.weight",
                "Mixed_6e.branch7x7dbl_5.bn.running_var", "Mixed_7c.branch_pool.conv.weight", "fc.bias"]:
        assert key in state
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert not any(k.startswith("AuxLogits") or k.endswith("num_batches_tracked") for k in state)
    assert len(state) == OFFICIAL_TENSORS
    assert sum(p.numel() for p in reference[0].parameters()) == OFFICIAL_PARAMETERS


def test_pool_branches_follow_the_tensorflow_graph(reference):
    net = reference[0]
    for block in [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
                  net.Mixed_7b]:
        assert isinstance(block.pool, nn.AvgPool2d) and block.pool.count_include_pad is False
    assert isinstance(net.Mixed_7c.pool, nn.MaxPool2d)
    # Functionally: averaging excludes the padding (a constant map stays constant at the border) ...
    ones = torch.ones(1, 1, 5, 5)
    assert torch.equal(net.Mixed_7b.pool(ones), ones)
    # ... and Mixed_7c takes the maximum of the 3×3 window.
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 1.0
    assert net.Mixed_7c.pool(spike)[0, 0, 1:4, 1:4].eq(1.0).all()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_roundtrip_gives_the_same_outputs(reference, tmp_path, suffix):
    net, x, (pool3, logits) = reference
    path = tmp_path / f"inception{suffix}"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = load_fid_inception(path)
    assert not loaded.training
    with torch.no_grad():
        pool3_loaded, logits_loaded = loaded(x)
    torch.testing.assert_close(pool3_loaded, pool3)
    torch.testing.assert_close(logits_loaded, logits)


def test_batchnorm_counters_in_a_resaved_file_are_ignored(reference, tmp_path):
    state = reference[0].state_dict()
    with_counters = {**state, "Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)}
    torch.save(with_counters, tmp_path / "resaved.pth")
    loaded = load_fid_inception(tmp_path / "resaved.pth").state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_wrong_architecture_and_shapes_are_rejected(reference, tmp_path):
    torch.save(nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(DiffrepError, match=r"linear\.pth is not an FID Inception-v3 weights file.*missing keys"):
        load_fid_inception(tmp_path / "linear.pth")
    state = dict(reference[0].state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "imagenet1000.pth")
    with pytest.raises(DiffrepError, match=r"fc\.weight has shape \(1000, 2048\)"):
        load_fid_inception(tmp_path / "imagenet1000.pth")


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(DiffrepError, match="not found: .*absent.pth"):
        load_fid_inception(tmp_path / "absent.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DiffrepError, match="cannot read .*garbage.safetensors"):
        load_fid_inception(tmp_path / "garbage.safetensors")


def test_failed_download_says_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DiffrepError, match="--encoder-weights") as info:
        load_fid_inception()
    assert inception.FID_WEIGHTS_URL in str(info.value) and "\n" not in str(info.value)
