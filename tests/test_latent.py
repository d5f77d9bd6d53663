"""Latent space: VAEs built, saved and loaded; the latent cache; training, sampling and reading runs in latent space."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import moved_away, weights

pytest.importorskip("diffusers")

from diffrep.config import make_config, preset  # noqa: E402
from diffrep.data import PixelSpace, load_builtin  # noqa: E402
from diffrep.errors import DiffrepError  # noqa: E402
from diffrep.latent.autoencoder import build_vae, load_vae, save_vae_folder  # noqa: E402
from diffrep.latent.cache import latent_cache_key, latent_table  # noqa: E402
from diffrep.latent.space import VAESpace, open_vae_space  # noqa: E402
from diffrep.processes import make_process  # noqa: E402
from diffrep.train.batches import draw_batch  # noqa: E402

DIGITS = (1, 8, 8)
LATENT = ["--space", None, "--data", "digits", "--model", "DiT-T/2", "--batch-size", 16, "--steps", 4,
          "--warmup", 1, "--ckpt-every", 4, "--grid-every", 0, "--log-every", 2, "--no-progress"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny AutoencoderKL for 8×8 digits (latent 4×4×4), with random weights, saved as a diffusers folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "tiny"
    save_vae_folder(build_vae("VAE-T", DIGITS, (4, 4, 4)), folder)
    return folder


def unnormalised(vae_dir) -> VAESpace:
    """The VAE's space with shift 0 and scale 1: its ``moments`` are the posterior's."""
    return VAESpace(load_vae(vae_dir))


def prepared(vae_dir, images, norm: str = "channel", hflip: bool = False, cache: bool = True) -> VAESpace:
    """The VAE's space, normalised on ``images`` (read from the latent cache, built if missing)."""
    space = open_vae_space(str(vae_dir), tuple(images.shape[1:]), norm)
    space.prepare(images, hflip, cache, progress=False)
    return space


def latent_args(vae) -> list:
    return [f"vae:{vae}" if a is None else a for a in LATENT]


def test_a_saved_vae_loads_with_its_hash_and_a_wrong_one_is_refused(vae_dir, tmp_path):
    a, b = load_vae(vae_dir), load_vae(vae_dir)
    assert a.sha256 == b.sha256 and a.latent_shape(DIGITS) == (4, 4, 4) and a.source == str(vae_dir.resolve())
    with pytest.raises(DiffrepError, match="reads 1-channel images but the data has 3"):
        a.latent_shape((3, 8, 8))
    with pytest.raises(DiffrepError, match="does not divide 7×7"):
        a.latent_shape((1, 7, 7))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(DiffrepError, match="not an AutoencoderKL folder .*UNet2DModel"):
        load_vae(tmp_path / "other")
    with pytest.raises(DiffrepError, match="no such folder"):
        load_vae(tmp_path / "missing")
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(DiffrepError, match="is a file"):
        load_vae(tmp_path / "w.safetensors")


def test_a_hub_name_goes_to_diffusers_and_no_network_is_one_line(monkeypatch):
    import diffusers

    asked = []

    def from_pretrained(name, **kw):
        asked.append((name, kw.get("use_safetensors")))
        if name.endswith("missing"):
            raise OSError("Name or service not known")
        return build_vae("VAE-T", DIGITS, (4, 4, 4))

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", from_pretrained)
    assert load_vae("stabilityai/sd-vae-ft-ema").source == "stabilityai/sd-vae-ft-ema"
    assert asked == [("stabilityai/sd-vae-ft-ema", True)], "safetensors only"
    with pytest.raises(DiffrepError, match="could not fetch it from the hub .*pass the folder"):
        load_vae("org/missing")


def test_without_diffusers_the_error_names_the_extra(monkeypatch, vae_dir):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(DiffrepError, match=r'pip install -e "\.\[latent\]"'):
        load_vae(vae_dir)


def test_the_cache_holds_the_posterior_moments_and_misses_for_another_vae(vae_dir, tmp_path):
    images = load_builtin("digits").images[:300]
    space = unnormalised(vae_dir)
    vae = space.vae
    calls = []

    def moments(x):
        calls.append(len(x))
        return space.moments(x)

    table = latent_table(moments, images, vae.sha256, hflip=True, root=tmp_path, progress=False)
    mean, std = space.moments(images)
    torch.testing.assert_close(table.mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(table.flip_std, space.moments(images.flip(-1))[1], atol=1e-5, rtol=1e-5)
    assert (std > 0).all() and calls == [256, 256, 44, 44]
    latent_table(moments, images, vae.sha256, hflip=True, root=tmp_path, progress=False)
    assert len(calls) == 4, "a hit encodes nothing"
    latent_table(moments, images, "another-vae", hflip=True, root=tmp_path, progress=False)
    assert len(calls) == 8, "another VAE misses"
    path = tmp_path / f"{latent_cache_key(images, vae.sha256, True)}.safetensors"
    path.write_bytes(path.read_bytes()[:100])          # damaged: recomputed, not read
    again = latent_table(moments, images, vae.sha256, hflip=True, root=tmp_path, progress=False)
    assert len(calls) == 12 and torch.equal(again.mean, table.mean)


def test_an_interrupted_cache_build_resumes_from_its_chunks(vae_dir, tmp_path):
    images = load_builtin("digits").images[:600]
    space = unnormalised(vae_dir)
    seen = []

    def failing(x):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(len(x))
        return space.moments(x)

    with pytest.raises(KeyboardInterrupt):
        latent_table(failing, images, space.vae.sha256, hflip=False, root=tmp_path, progress=False)
    seen.clear()
    table = latent_table(lambda x: (seen.append(len(x)), space.moments(x))[1], images, space.vae.sha256, hflip=False,
                         root=tmp_path, progress=False)
    assert seen == [88] and table.mean.shape == (600, 4, 4, 4)


def test_channel_normalisation_gives_latents_of_mean_0_and_std_1(vae_dir):
    images = load_builtin("digits").images
    space = prepared(vae_dir, images)
    g = torch.Generator().manual_seed(0)
    x0 = space.draw_x0(images, torch.arange(len(images)), None, g)
    per_channel = x0.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(4), atol=0.05, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(4), atol=0.05, rtol=0)
    fixed = prepared(vae_dir, images, norm="0.5")
    assert fixed.describe()["scale"] == [2.0] * 4 and fixed.describe()["shift"] == [0.0] * 4
    with pytest.raises(DiffrepError, match="--latent-norm 'abc'"):
        open_vae_space(str(vae_dir), DIGITS, norm="abc")


@pytest.mark.parametrize("hflip", [False, True])
def test_a_cached_batch_equals_one_encoded_on_the_fly(vae_dir, hflip):
    """Same flips, same posterior draws: the cache changes only where the moments come from."""
    data = load_builtin("digits")
    cfg = make_config(preset("smoke"), {"data": "digits", "hflip": hflip, "batch_size": 64})
    cached, live = prepared(vae_dir, data.images, hflip=hflip), prepared(vae_dir, data.images, hflip=hflip, cache=False)
    assert cached.table is not None and live.table is None
    index = torch.arange(64) * 7
    a, b = (draw_batch(data, index, cfg, make_process("flow"), 3, space=s) for s in (cached, live))
    torch.testing.assert_close(a.x0, b.x0, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.t, b.t) and torch.equal(a.pixels, b.pixels)
    c = draw_batch(data, index, cfg, make_process("flow"), 4, space=cached)
    assert (a.x0 - c.x0).abs().mean() > 0.1, "a fresh latent every step"


def test_the_pixel_space_draws_nothing():
    pixels = load_builtin("digits").images[:4]
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(PixelSpace().draw_x0(pixels, torch.arange(4), None, g), PixelSpace().encode(pixels))
    assert torch.equal(g.get_state(), state)


def test_a_latent_run_trains_samples_reads_and_refuses_what_it_cannot(vae_dir, tmp_path, cli):
    run = tmp_path / "run"
    code, out, err = cli("train", *latent_args(vae_dir), "--out", run)
    assert code == 0, err
    info = json.loads((run / "model.json").read_text())
    assert info["image_shape"] == [1, 8, 8] and info["x0_shape"] == [4, 4, 4] and info["space"]["name"] == "vae"
    code, out, err = cli("sample", run, "--n", 20, "--steps", 4, "--out", tmp_path / "s.npz", "--no-progress")
    assert code == 0, err
    import numpy as np

    samples = np.load(tmp_path / "s.npz")["arr_0"]
    assert samples.shape == (20, 8, 8, 1) and samples.dtype == np.uint8 and samples.std() > 0
    code, out, err = cli("features", run, "--t", "0.5", "--blocks", "block1", "--out", tmp_path / "f.npz",
                         "--no-progress")
    assert code == 0, err
    code, out, err = cli("classify", run, "--n", 10, "--pairs", 4, "--no-progress")
    assert code == 0 and "accuracy" in out, err
    code, _, err = cli("restore", run, "--task", "denoise", "--solver", "dps", "--n", 2)
    assert code == 2 and "latent space" in err and "pixel-space run" in err
    with moved_away(vae_dir):
        code, _, err = cli("sample", run, "--n", 4, "--out", tmp_path / "t.npz")
    assert code == 2 and "cannot be loaded now" in err and "put the VAE back" in err


def test_a_latent_run_resumes_bit_for_bit(vae_dir, tmp_path, cli):
    args = latent_args(vae_dir) + ["--hflip", "--precision", "fp32"]
    assert cli("train", *args, "--out", tmp_path / "full")[0] == 0
    assert cli("train", *args, "--steps", 2, "--ckpt-every", 2, "--out", tmp_path / "half")[0] == 0
    assert cli("train", *args, "--out", tmp_path / "half", "--resume")[0] == 0
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_from_the_cache_trains_the_weights_of_one_that_encodes_on_the_fly(vae_dir, tmp_path, cli):
    args = latent_args(vae_dir) + ["--hflip", "--precision", "fp32"]
    assert cli("train", *args, "--out", tmp_path / "cached")[0] == 0
    assert cli("train", *args, "--no-latent-cache", "--out", tmp_path / "live")[0] == 0
    a, b = weights(tmp_path / "cached"), weights(tmp_path / "live")
    for k in a:     # the same draws; the moments differ by the rounding of encoding in other batches
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


def test_repa_in_latent_space_aligns_with_the_pixels(vae_dir, tmp_path, cli):
    code, _, err = cli("train", *latent_args(vae_dir), "--plugin", "repa:depth=1", "--out", tmp_path / "r")
    assert code == 0, err
    log = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["repa/align"] < 0, log[-1]


def test_bad_latent_options_are_one_line_errors(vae_dir, tmp_path, cli):
    code, _, err = cli("train", "--space", "vae:", "--out", tmp_path / "a")
    assert code == 2 and "--space 'vae:'" in err
    code, _, err = cli("train", "--latent-norm", "0.18215", "--out", tmp_path / "b")
    assert code == 2 and "apply to a latent space only" in err
    code, _, err = cli("train", "--space", f"vae:{tmp_path}", "--data", "digits", "--out", tmp_path / "c")
    assert code == 2 and "is not an AutoencoderKL folder" in err
    import numpy as np

    np.savez(tmp_path / "rgb.npz", arr_0=np.zeros((20, 8, 8, 3), np.uint8))
    code, _, err = cli("train", *latent_args(vae_dir), "--data", tmp_path / "rgb.npz", "--out", tmp_path / "d")
    assert code == 2 and "reads 1-channel images but the data has 3" in err, err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir()), "refused before writing"


def test_train_vae_resumes_bit_for_bit_and_exports_a_diffusers_folder(tmp_path, cli):
    args = ["train-vae", "--data", "digits", "--latent", "4x4x4", "--batch-size", 16, "--warmup", 1,
            "--precision", "fp32", "--no-progress"]
    code, out, err = cli(*args, "--steps", 4, "--out", tmp_path / "full")
    assert code == 0 and "reference accuracy" in out, err
    floor = json.loads((tmp_path / "full" / "reconstruction.json").read_text())
    assert 0 <= floor["accuracy"] <= 1 and floor["fd_ref"] > 0 and floor["n"] == len(load_builtin("digits", "test"))
    assert cli(*args, "--steps", 2, "--ckpt-every", 2, "--out", tmp_path / "half")[0] == 0
    assert cli(*args, "--steps", 4, "--out", tmp_path / "half", "--resume")[0] == 0
    a, b = (load_vae(tmp_path / name).vae.state_dict() for name in ("full", "half"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, _, err = cli(*args, "--steps", 4, "--out", tmp_path / "full")
    assert code == 2 and "already holds a VAE run" in err
    code, _, err = cli(*args, "--steps", 4, "--latent", "4x3x3", "--out", tmp_path / "bad")
    assert code == 2 and "does not fit 8×8 images" in err
