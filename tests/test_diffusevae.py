"""DiffuseVAE: a pixel net conditioned on a VAE's reconstructions: trained, sampled from VAE samples, read, refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import moved_away, weights

pytest.importorskip("diffusers")

from diffrep.config import make_config  # noqa: E402
from diffrep.data import load_builtin  # noqa: E402
from diffrep.errors import DiffrepError  # noqa: E402
from diffrep.latent.autoencoder import build_vae, save_vae_folder  # noqa: E402
from diffrep.latent.diffusevae import open_reconstructions  # noqa: E402
from diffrep.nets import build_net  # noqa: E402
from diffrep.processes import ImageBound, make_process  # noqa: E402
from diffrep.runs import load_run  # noqa: E402
from diffrep.train.batches import draw_batch  # noqa: E402

DIGITS = (1, 8, 8)


def run_args(vae, *extra) -> list:
    return ["train", "--data", "digits", "--diffusevae", vae, "--model", "UNet-XS", "--batch-size", 16, "--steps", 4,
            "--warmup", 1, "--ckpt-every", 4, "--grid-every", 4, "--log-every", 2, "--no-progress", *extra]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dvae") / "vae"
    save_vae_folder(build_vae("VAE-T", DIGITS, (4, 4, 4)), folder)
    return folder


@pytest.fixture(scope="module")
def trained(vae_dir, tmp_path_factory):
    from diffrep.cli import main

    run = tmp_path_factory.mktemp("dvae-run") / "run"
    assert main([str(a) for a in run_args(vae_dir, "--out", run)]) == 0
    return run


@pytest.mark.parametrize("hflip", [False, True])
def test_a_batch_carries_the_reconstructions_of_its_own_flipped_images(vae_dir, hflip):
    data = load_builtin("digits")
    recon = open_reconstructions(str(vae_dir), DIGITS)
    recon.prepare(data.images, hflip, progress=False)
    cfg = make_config({"data": "digits", "hflip": hflip, "diffusevae": str(vae_dir)})
    indices = torch.arange(40, 72)
    batch = draw_batch(data, indices, cfg, make_process("flow"), 3, condition=recon)
    assert batch.image.shape == batch.x0.shape
    expected = recon.reconstruct(batch.pixels)      # encoded now, from the batch's (flipped) pixels
    assert (batch.image - expected).abs().max() <= 2 / 255 + 1e-6
    assert (batch.image - batch.x0).abs().mean() > 0.01, "a reconstruction, not the image itself"
    if hflip:
        flipped = recon.reconstruct(data.images[indices].flip(-1))
        unflipped = recon.reconstruct(data.images[indices])
        differs = (flipped - unflipped).flatten(1).abs().amax(1) > 0.05
        mirrored = (batch.pixels != data.images[indices]).flatten(1).any(1)
        assert mirrored.any() and differs[mirrored].any(), "some rows use the mirror image's reconstruction"


def test_the_net_refuses_a_missing_or_unexpected_image():
    net = build_net("UNet-XS", 8, 1, 0, image_channels=1)
    x, t = torch.zeros(2, *DIGITS), torch.zeros(2)
    with pytest.raises(DiffrepError, match="conditioned on an image"):
        net(x, t)
    with pytest.raises(DiffrepError, match="takes 1 channels at"):
        net(x, t, image=torch.zeros(3, *DIGITS))
    with pytest.raises(DiffrepError, match="takes no conditioning image"):
        build_net("UNet-XS", 8, 1, 0)(x, t, image=x)
    dit = build_net("DiT-T/4", 8, 1, 0, image_channels=1)
    assert dit.x_embedder.in_channels == 2 and dit(x, t, image=x)[0].shape == x.shape


def test_a_bound_image_is_repeated_for_a_doubled_batch():
    seen = []

    class Spy:
        process = make_process("flow")

        def __call__(self, x, t, cond=None, taps=(), image=None):
            seen.append(image)
            return x

    image = torch.arange(2.0).view(2, 1, 1, 1).expand(2, *DIGITS)
    bound = ImageBound(Spy(), image)
    bound(torch.zeros(2, *DIGITS), 0.5)
    bound(torch.zeros(4, *DIGITS), 0.5)         # classifier-free guidance's [conditional; unconditional] batch
    assert torch.equal(seen[0], image) and torch.equal(seen[1], torch.cat([image, image]))


def test_a_diffusevae_run_records_its_vae_and_samples_from_vae_samples(trained, vae_dir, tmp_path, cli):
    info = json.loads((trained / "model.json").read_text())
    assert info["image_condition"]["name"] == "diffusevae" and len(info["image_condition"]["vae_sha256"]) == 64
    assert (trained / "grids" / "step_0000004.png").exists()
    run = load_run(trained, device="cpu")
    assert run.net.image_channels == 1 and run.image_condition is not None
    denoiser = run.process.denoiser(run.net)
    x = torch.randn(4, *DIGITS)
    a = denoiser(x, 0.5, image=torch.zeros(4, *DIGITS)).x0
    b = denoiser(x, 0.5, image=torch.ones(4, *DIGITS)).x0
    assert (a - b).abs().max() > 1e-4, "the trained net reads its conditioning image"
    args = ["sample", trained, "--n", 12, "--steps", 3, "--batch-size", 6, "--no-progress"]
    assert cli(*args, "--out", tmp_path / "a.npz")[0] == 0
    assert cli(*args, "--out", tmp_path / "b.npz")[0] == 0
    first, again = (np.load(tmp_path / f"{k}.npz")["arr_0"] for k in "ab")
    assert first.shape == (12, 8, 8, 1) and np.array_equal(first, again) and first.std() > 0
    code, out, err = cli("features", trained, "--t", "0.5", "--blocks", "block1", "--out", tmp_path / "f.npz",
                         "--no-progress")
    assert code == 0, err
    code, _, err = cli("restore", trained, "--task", "denoise", "--solver", "dps", "--n", 2)
    assert code == 2 and "DiffuseVAE run" in err and "without --diffusevae" in err


def test_a_diffusevae_run_resumes_bit_for_bit(vae_dir, tmp_path, cli):
    args = run_args(vae_dir, "--hflip", "--precision", "fp32", "--grid-every", 0)
    assert cli(*args, "--out", tmp_path / "full")[0] == 0
    assert cli(*args, "--steps", 2, "--ckpt-every", 2, "--out", tmp_path / "half")[0] == 0
    assert cli(*args, "--out", tmp_path / "half", "--resume")[0] == 0
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_diffusevae_input_is_one_line(trained, vae_dir, tmp_path, cli):
    code, _, err = cli(*run_args(vae_dir, "--space", f"vae:{vae_dir}", "--out", tmp_path / "a"))
    assert code == 2 and "drop --space" in err
    np.savez(tmp_path / "rgb.npz", arr_0=np.zeros((20, 8, 8, 3), np.uint8))
    code, _, err = cli(*run_args(vae_dir, "--data", tmp_path / "rgb.npz", "--out", tmp_path / "b"))
    assert code == 2 and "makes 1-channel images but the data has 3" in err, err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir()), "refused before writing"
    code, _, err = cli(*run_args(tmp_path, "--out", tmp_path / "c"))
    assert code == 2 and "AutoencoderKL" in err
    with moved_away(vae_dir):
        code, _, err = cli("sample", trained, "--n", 4, "--out", tmp_path / "s.npz")
    assert code == 2 and "DiffuseVAE" in err and "put the VAE back" in err
