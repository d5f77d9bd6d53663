"""Encoders (resize modes, specs, weights files), the feature cache, evaluation inputs and `diffrep eval`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from diffrep.evaluation.encoders import encoder_from_module, get_encoder, state_dict_sha256
from diffrep.evaluation.encoders.resize import resize
from diffrep.errors import DiffrepError
from diffrep.data import load_dataset
from diffrep.evaluation.evaluate import EvalSet, evaluate, load_eval_set
from diffrep.evaluation.features import FeatureCache, extract_features


def _tf_bilinear_direct(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False), by its definition."""
    h, w = img.shape
    out = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            y, x = i * h / size, j * w / size
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            top = img[y0, x0] * (1 - dx) + img[y0, x1] * dx
            bottom = img[y1, x0] * (1 - dx) + img[y1, x1] * dx
            out[i, j] = top * (1 - dy) + bottom * dy
    return out


def test_bilinear_tf_resize_matches_its_definition():
    img = np.random.default_rng(0).integers(0, 256, (7, 7))
    for size in (17, 4):
        ours = resize(torch.tensor(img, dtype=torch.uint8)[None, None], size, "bilinear-tf")[0, 0].numpy()
        np.testing.assert_allclose(ours, _tf_bilinear_direct(img / 255, size), atol=1e-5)


def test_clean_resize_antialiases_and_keeps_constants():
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2
    x = (checker * 255).to(torch.uint8)[None, None]
    clean = resize(x, 16, "clean")
    assert (clean - 0.5).abs().max() < 0.02, "a 1-px checkerboard averages out when shrinking"
    assert (resize(x, 16, "bilinear-tf") - 0.5).abs().max() > 0.4, "no antialias: aliasing"
    const = torch.full((2, 3, 8, 8), 64, dtype=torch.uint8)
    for mode in ("clean", "pil-bicubic", "bilinear-tf", "bilinear", "bicubic"):
        torch.testing.assert_close(resize(const, 13, mode), torch.full((2, 3, 13, 13), 64 / 255), atol=1e-5, rtol=0)
    torch.testing.assert_close(resize(const, 8, "none"), const.float() / 255)
    with pytest.raises(DiffrepError, match="--resize"):
        resize(const, 13, "none")


class TinyNet(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def _images(n: int = 10, c: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_encoder_spec_hashes_weights_and_repeats_grey_channels():
    a, b = TinyNet(0), TinyNet(0)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.conv.bias[0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)
    enc = encoder_from_module(a, "tiny", input_size=12, resize_mode="bilinear")
    grey = _images()
    torch.testing.assert_close(enc(grey).features, enc(grey.expand(-1, 3, -1, -1)).features)
    assert enc(grey).features.shape == (10, 4)
    with pytest.raises(DiffrepError, match="3-channel"):
        enc(_images(c=2))
    with pytest.raises(DiffrepError, match="uint8"):
        enc(grey.float())


def test_registry_errors_are_one_line_and_name_the_fix():
    with pytest.raises(DiffrepError, match="choose from .*inception"):
        get_encoder("nope")
    with pytest.raises(DiffrepError, match="resize mode"):
        get_encoder("pixels", resize_mode="lanczos")
    with pytest.raises(DiffrepError, match="no weights"):
        get_encoder("pixels", weights="w.safetensors")
    with pytest.raises(DiffrepError, match="has one layer"):
        get_encoder("pixels:projected")
    with pytest.raises(DiffrepError, match="use clip:cls or clip:projected"):     # before any download
        get_encoder("clip:tokens")


def test_inception_and_dinov2_load_through_the_users_path(tmp_path):
    """Random-weight files of the official layouts, loaded by name with a local weights file."""
    from safetensors.torch import save_file

    from diffrep.evaluation.encoders.dinov2 import DINOV2_CONFIGS, DinoV2ViT
    from diffrep.evaluation.encoders.inception import FIDInceptionV3

    torch.manual_seed(0)
    save_file(FIDInceptionV3().state_dict(), tmp_path / "inception.safetensors")
    cfg = {k: DINOV2_CONFIGS["dinov2-s14"][k] for k in ("embed_dim", "depth", "num_heads")}
    torch.save(DinoV2ViT(**cfg).state_dict(), tmp_path / "vits14.pth")
    images = _images(n=3, c=1, size=32)
    inception = get_encoder("inception", tmp_path / "inception.safetensors")
    out = inception(images)
    assert out.features.shape == (3, 2048) and out.logits.shape == (3, 1008)
    assert inception.spec.input_size == 299 and inception.spec.resize == "clean"
    dino = get_encoder("dinov2-s14", tmp_path / "vits14.pth")
    assert dino(images).features.shape == (3, 384)
    assert dino.spec.as_dict()["weights_sha256"] == state_dict_sha256(dino.net)
    with pytest.raises(DiffrepError, match="missing"):
        get_encoder("dinov2-s14", tmp_path / "inception.safetensors")


def test_feature_cache_hits_on_the_same_key_and_misses_on_any_change(tmp_path):
    cache = FeatureCache(tmp_path)
    images = _images(n=12)
    enc = encoder_from_module(TinyNet(0), "tiny", input_size=10, resize_mode="bilinear")
    first = extract_features(enc, images, batch_size=5, cache=cache, progress=False)
    calls = []
    enc.net.register_forward_hook(lambda *a: calls.append(1))
    again = extract_features(enc, images, batch_size=5, cache=cache, progress=False)
    assert not calls and torch.equal(first.features, again.features)
    variants = [encoder_from_module(TinyNet(0), "tiny", input_size=10, resize_mode="bicubic"),      # resize mode
                encoder_from_module(TinyNet(1), "tiny", input_size=10, resize_mode="bilinear"),     # weights
                encoder_from_module(TinyNet(0), "tiny2", input_size=10, resize_mode="bilinear"),    # architecture name
                encoder_from_module(TinyNet(0), "tiny", input_size=12, resize_mode="bilinear")]     # input size
    for v in variants:
        extract_features(v, images, batch_size=5, cache=cache, progress=False)
    extract_features(enc, images, batch_size=5, dtype="bf16", cache=cache, progress=False)          # dtype
    extract_features(enc, images[:11], batch_size=5, cache=cache, progress=False)                   # images
    assert len(list(tmp_path.glob("*.safetensors"))) == 7
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


def test_a_damaged_cache_entry_is_recomputed(tmp_path):
    cache = FeatureCache(tmp_path)
    images = _images()
    enc = encoder_from_module(TinyNet(0), "tiny", input_size=8)
    first = extract_features(enc, images, cache=cache, progress=False)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:20])
    assert torch.equal(extract_features(enc, images, cache=cache, progress=False).features, first.features)


def test_eval_inputs_and_their_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(DiffrepError, match="neither images 'arr_0' nor statistics"):
        load_eval_set(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    stats = load_eval_set(str(tmp_path / "stats.npz"))
    assert stats.images is None and stats.stats[0].shape == (4,)
    gen = load_eval_set("mnist5k:test")
    pixels = [get_encoder("pixels")]
    with pytest.raises(DiffrepError, match="only fd"):
        evaluate(gen, stats, metric_names=["prdc"], encoders=pixels)
    with pytest.raises(DiffrepError, match="--encoders inception"):
        evaluate(gen, stats, metric_names=["fd"], encoders=pixels)
    for mode, warns in (("clean", True), ("bilinear-tf", False)):   # ADM statistics come from the TF graph's resize
        fake_inception = encoder_from_module(TinyNet(), "inception", resize_mode=mode)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            evaluate(gen, stats, metric_names=["fd"], encoders=[fake_inception], progress=False)
        assert any("--resize bilinear-tf" in str(w.message) for w in caught) == warns
    with pytest.raises(DiffrepError, match="--train"):
        evaluate(gen, gen, metric_names=["authpct"], encoders=pixels)
    with pytest.raises(DiffrepError, match="empty"):
        evaluate(EvalSet("e", gen.images[:0]), gen, metric_names=["fd"], encoders=pixels)
    with pytest.raises(DiffrepError, match="sets differ"):
        evaluate(load_eval_set("digits:test"), gen, metric_names=["fd"], encoders=pixels)
    with pytest.raises(DiffrepError, match="unknown metric"):
        evaluate(gen, gen, metric_names=["fid"], encoders=pixels)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    with pytest.raises(DiffrepError, match="diffrep sample"):
        load_eval_set(str(tmp_path / "run"))


def test_an_encoder_with_an_input_size_compares_sets_of_different_sizes():
    enc = encoder_from_module(TinyNet(0), "tiny", input_size=16, resize_mode="bilinear")
    rows = evaluate(load_eval_set("digits:test"), load_eval_set("mnist5k:test"), metric_names=["fd"], encoders=[enc],
                    progress=False)
    assert rows[0]["values"]["fd"] > 0 and rows[0]["encoder_spec"]["resize"] == "bilinear"


def test_eval_cli_orders_train_noise_and_writes_json(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFREP_CACHE", str(tmp_path / "cache"))
    noise = np.random.default_rng(0).integers(0, 256, (400, 32, 32, 1), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", arr_0=noise)
    out = {}
    for name, gen in (("train", "mnist5k:train"), ("noise", tmp_path / "noise.npz")):
        code, stdout, err = cli("eval", gen, "mnist5k:test", "--metrics", "fd,prdc,is", "--encoders", "reference,pixels",
                                "--no-progress", "--out", tmp_path / f"{name}.json")
        assert code == 0, err
        assert "precision" in stdout and "reference" in stdout
        out[name] = {(r["encoder"], r["metric"]): r for r in json.loads((tmp_path / f"{name}.json").read_text())["rows"]}
    fd_train, fd_noise = (out[k]["reference", "fd"]["values"]["fd"] for k in ("train", "noise"))
    assert fd_train < 0.2 < 10 < fd_noise
    assert out["train"]["reference", "prdc"]["values"]["precision"] > 0.8 > out["noise"]["reference", "prdc"]["values"]["precision"]
    spec = out["train"]["reference", "fd"]["encoder_spec"]
    assert spec["resize"] == "none" and len(spec["weights_sha256"]) == 64
    assert out["train"]["pixels", "is"]["skipped"]
    assert out["train"]["reference", "is"]["values"]["is"] > 5 > out["noise"]["reference", "is"]["values"]["is"]
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 6


def test_features_cli_writes_features_and_spec(cli, tmp_path):
    code, _, err = cli("features", "digits:test", "--encoder", "pixels", "--no-cache", "--no-progress",
                       "--out", tmp_path / "f.npz")
    assert code == 0, err
    with np.load(tmp_path / "f.npz") as f:
        assert f["features"].shape == (len(load_eval_set("digits:test").images), 64)
        assert json.loads(str(f["spec"]))["name"] == "pixels"


def test_features_of_a_built_in_split_default_to_that_datasets_reference_encoder(cli, tmp_path):
    code, _, err = cli("features", "digits:test", "--no-cache", "--no-progress", "--out", tmp_path / "f.npz")
    assert code == 0, err
    test = load_dataset("digits", split="test")
    with np.load(tmp_path / "f.npz") as f:
        assert json.loads(str(f["spec"]))["name"] == "reference"
        accuracy = (f["logits"].argmax(1) == test.labels.numpy()).mean()
    assert accuracy > 0.9     # the digits encoder; the MNIST one scores 18% on these
