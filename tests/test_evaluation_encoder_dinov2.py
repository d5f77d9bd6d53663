"""DINOv2 ViT backbone (arXiv 2304.07193): official key layout, pos-embed interpolation, strict loading."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffrep.evaluation.encoders.dinov2 import DINOV2_CONFIGS, DinoV2ViT, load_dinov2
from diffrep.errors import DiffrepError

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "pretrain_grid": 4}


def _tiny(seed: int = 0) -> DinoV2ViT:
    torch.manual_seed(seed)
    model = DinoV2ViT(32, 2, 2, pretrain_grid=4).eval()
    with torch.no_grad():  # non-trivial LayerScale / LayerNorm values, so a swapped parameter would show
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """Written-out DINOv2 forward from a state dict at the pretrain grid, with explicit softmax attention."""
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat((sd["cls_token"].expand(len(x), -1, -1), tokens), dim=1) + sd["pos_embed"]
    n, t, d = tokens.shape
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(tokens, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(n, t, 3, heads, -1).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        h = F.linear((attn @ v).transpose(1, 2).reshape(n, t, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        tokens = tokens + sd[p + "ls1.gamma"] * h
        h = F.layer_norm(tokens, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        tokens = tokens + sd[p + "ls2.gamma"] * F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return F.layer_norm(tokens, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 0]


def test_output_shapes_and_interpolation():
    model = _tiny()
    with torch.no_grad():
        for size in [(56, 56), (28, 28), (42, 70)]:
            out = model(torch.randn(3, 3, *size))
            assert out.shape == (3, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    pos = model.pos_embed_for_grid(2, 3)
    assert pos.shape == (1, 1 + 2 * 3, 32)
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0])  # the CLS entry is never interpolated


def test_pretrain_resolution_uses_raw_pos_embed():
    model = _tiny()
    assert model.pos_embed_for_grid(4, 4) is model.pos_embed
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = _reference_forward(model.state_dict(), x, heads=2, depth=2)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_interpolation_matches_official_recipe():
    model = _tiny()
    grid = model.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    # official: scale factor (target + 0.1) / pretrain_grid, bicubic, no antialias
    resized = F.interpolate(grid, scale_factor=(2.1 / 4, 6.1 / 4), mode="bicubic", align_corners=False)
    expected = resized.permute(0, 2, 3, 1).reshape(1, 12, 32)
    torch.testing.assert_close(model.pos_embed_for_grid(2, 6)[:, 1:], expected, rtol=0, atol=0)


def test_autocast_bfloat16_returns_float32():
    model = _tiny()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 28, 28))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_official_key_layout():
    shapes = {key: tuple(value.shape) for key, value in _tiny().state_dict().items()}
    assert shapes["cls_token"] == (1, 1, 32)
    assert shapes["pos_embed"] == (1, 1 + 4 * 4, 32)
    assert shapes["mask_token"] == (1, 32)
    assert shapes["patch_embed.proj.weight"] == (32, 3, 14, 14)
    assert shapes["blocks.0.ls1.gamma"] == (32,)
    assert shapes["blocks.1.attn.qkv.weight"] == (96, 32) and shapes["blocks.1.attn.qkv.bias"] == (96,)
    assert shapes["blocks.1.mlp.fc1.weight"] == (128, 32) and shapes["blocks.1.ls2.gamma"] == (32,)
    assert shapes["norm.weight"] == (32,)
    assert not any(key.startswith("blocks.0.0.") for key in shapes)  # flat blocks, as the hub files


def test_vit_s14_parameter_count():
    # D = 384, 12 blocks, patch 14, grid 37:
    #   patch_embed 3·14·14·D + D = 226_176; cls_token D = 384; mask_token D = 384; pos_embed (1 + 37²)·D = 526_080
    #   per block 12·D² + 15·D = 1_775_232 (qkv 3D² + 3D, proj D² + D, fc1 4D² + 4D, fc2 4D² + D, 2 LN 4D, 2 LS 2D)
    #   final norm 2·D = 768
    #   total 226_176 + 384 + 384 + 526_080 + 12·1_775_232 + 768 = 22_056_576 (the paper's "21M"; hub 22.06M)
    cfg = DINOV2_CONFIGS["dinov2-s14"]
    with torch.device("meta"):
        model = DinoV2ViT(cfg["embed_dim"], cfg["depth"], cfg["num_heads"])
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    assert model.pos_embed.shape == (1, 1 + 37 * 37, 384)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_roundtrip(tmp_path, suffix):
    model = _tiny()
    path = tmp_path / f"tiny{suffix}"
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    loaded = load_dinov2("dinov2-s14", path, config=TINY)
    assert not loaded.training
    x = torch.randn(2, 3, 42, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_wrong_architecture_file(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(DiffrepError, match=r"not a dinov2-s14 weights file.*missing keys \['blocks\.2\."):
        load_dinov2("dinov2-s14", path, config={**TINY, "depth": 3})
    with pytest.raises(DiffrepError, match="missing keys"):
        load_dinov2("dinov2-s14", path)  # the real ViT-S/14 has 12 blocks
    shape_error = r"pos_embed has shape \(1, 17, 32\), expected \(1, 10, 32\)"
    with pytest.raises(DiffrepError, match=shape_error):
        load_dinov2("dinov2-s14", path, config={**TINY, "pretrain_grid": 3})


def test_unexpected_keys_and_unreadable_files(tmp_path):
    state = {f"model.{key}": value for key, value in _tiny().state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save(state, path)
    with pytest.raises(DiffrepError, match=r"unexpected keys \['model\."):
        load_dinov2("dinov2-s14", path, config=TINY)
    for name in ["junk.pth", "junk.safetensors"]:
        (tmp_path / name).write_bytes(b"not a checkpoint")
        with pytest.raises(DiffrepError, match="cannot read"):
            load_dinov2("dinov2-s14", tmp_path / name, config=TINY)


def test_unknown_name_missing_path_and_no_network(tmp_path, monkeypatch):
    with pytest.raises(DiffrepError, match="dinov2-s14, dinov2-b14, dinov2-l14"):
        load_dinov2("dinov2-g14")
    with pytest.raises(DiffrepError, match="not found: .*absent.pth"):
        load_dinov2("dinov2-b14", tmp_path / "absent.pth")
    with pytest.raises(DiffrepError, match="unknown DINOv2 config keys"):
        load_dinov2("dinov2-s14", tmp_path / "absent.pth", config={"width": 3})

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DiffrepError, match="--encoder-weights") as info:
        load_dinov2("dinov2-l14")
    assert "dinov2_vitl14_pretrain.pth" in str(info.value) and "\n" not in str(info.value)
