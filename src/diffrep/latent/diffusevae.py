"""DiffuseVAE (Pandey et al., arXiv 2201.00308), form 1: a diffusion model conditioned on a VAE's reconstruction.

The net sees ``x_t`` with the VAE's reconstruction ``x̂`` of the training image concatenated along channels
(``--diffusevae VAE``; :func:`diffrep.nets.common.join_image`).  To generate, the VAE samples ``x̂ = decode(z)`` with
``z ~ N(0, I)`` and the diffusion model refines it: the VAE gives the layout, so few steps suffice (the paper's
direction).  ``x̂`` is the decoded posterior mean, rounded to ``uint8`` like any image, in training and in sampling
alike.  The VAE should be trained as a generative model (a KL weight near ``2σ²`` of the summed squared error,
``diffrep train-vae --kl-weight 0.05``), not with LDM's 1e-6, else ``decode(N(0, I))`` is not an image.

Pixel runs only: the reconstruction is an image, and the run's ``x0`` is one.  The run records the VAE (path and
weights' SHA-256) in ``model.json`` under ``image_condition``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffrep.data.images import to_model_range
from diffrep.errors import DiffrepError
from diffrep.latent.autoencoder import LoadedVAE, load_vae
from diffrep.latent.cache import latent_table
from diffrep.latent.space import VAESpace, recorded_vae


class Reconstructions:
    """The conditioning images of a DiffuseVAE run: reconstructions of the training images (and of their mirror images
    when the run flips), reconstructions of given images, and VAE samples for generation."""

    name = "diffusevae"

    def __init__(self, vae: LoadedVAE, image_shape: tuple[int, int, int], device: str | torch.device = "cpu"):
        if vae.channels != image_shape[0]:
            raise DiffrepError(f"--diffusevae: the VAE {vae.source} makes {vae.channels}-channel images but the data "
                               f"has {image_shape[0]} channels: train a VAE on this data (diffrep train-vae)")
        self.latent_shape = vae.latent_shape(image_shape)
        self.image_shape = image_shape
        self.space = VAESpace(vae, device=device)          # unnormalised: x0 is the raw latent z
        self.table: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    def prepare(self, images: torch.Tensor, hflip: bool = False, progress: bool = True) -> None:
        """Reconstruct the training images once (their posterior moments come from the latent cache)."""
        table = latent_table(self.space.moments, images, self.space.vae.sha256, hflip, progress=progress)
        mirrored = None if table.flip_mean is None else self.space.decode(table.flip_mean)
        self.table = (self.space.decode(table.mean), mirrored)

    def draw(self, indices: torch.Tensor, flipped: torch.Tensor | None) -> torch.Tensor:
        """The reconstructions of training images ``indices`` (of the mirror image where ``flipped``), in [-1, 1]."""
        if self.table is None:
            raise RuntimeError("Reconstructions.prepare() must run before draw()")
        plain, mirrored = self.table
        images = plain[indices]
        if flipped is not None and bool(flipped.any()):
            images = torch.where(flipped[:, None, None, None], mirrored[indices], images)
        return to_model_range(images)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images → their reconstructions in [-1, 1] (what the net was trained to refine)."""
        return to_model_range(self.space.decode(self.space.moments(images)[0]))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` VAE samples ``decode(z)``, ``z ~ N(0, I)`` drawn from ``generator`` on the CPU, in [-1, 1]."""
        return to_model_range(self.space.decode(torch.randn((n, *self.latent_shape), generator=generator)))

    def describe(self) -> dict:
        return {"name": self.name, "vae": self.space.vae.source, "vae_sha256": self.space.vae.sha256}


def open_reconstructions(source: str, image_shape: tuple[int, int, int],
                         device: str | torch.device = "cpu") -> Reconstructions:
    """The DiffuseVAE condition of the VAE at ``source`` for images of ``image_shape`` (one-line errors where it does
    not fit); training then calls :meth:`Reconstructions.prepare`."""
    return Reconstructions(load_vae(source), image_shape, device)


def reconstructions_from_record(record: dict | None, image_shape: tuple[int, int, int], run: Path | str,
                                device: str | torch.device = "cpu") -> Reconstructions | None:
    """The condition a run was trained with (``model.json``'s ``image_condition``; ``None`` for most runs)."""
    if record is None:
        return None
    if record.get("name") != Reconstructions.name:
        raise DiffrepError(f"{run}/model.json names an unknown image condition {record.get('name')!r}: this diffrep "
                           "knows diffusevae")
    return Reconstructions(recorded_vae(record, run, "on reconstructions (DiffuseVAE) of the VAE"), image_shape, device)
