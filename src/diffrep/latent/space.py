"""A VAE's latent space (LDM, 2112.10752): the net works on normalised latents, images come back through the decoder.

``x0 = (z − shift) / scale`` per channel.  ``--latent-norm channel`` (the default) measures shift and scale on the
training data: the mean and std of ``z ~ N(mean, std²)`` over every image (:func:`~diffrep.latent.cache.channel_stats`);
a number ``s`` is the fixed scale of LDM/SD (``x0 = s·z``; SD-VAE's 0.18215), which newer VAEs do not fit.  Training
draws a fresh ``z`` every step (:meth:`VAESpace.draw_x0`); ``encode`` (features, probes, the Diffusion Classifier) takes
the posterior mean.  The run records the VAE (its path and weights' SHA-256) and the normalisation in ``model.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from diffrep.data.images import to_model_range, to_uint8
from diffrep.errors import DiffrepError
from diffrep.latent.autoencoder import LoadedVAE, load_vae
from diffrep.latent.cache import CHUNK, LatentTable, channel_stats, latent_table

FIXED_SCALE_SD = 0.18215
"""LDM's scale of the SD-VAE latents (DiT decodes ``vae.decode(x0 / 0.18215)``)."""


def parse_norm(norm: str) -> float | None:
    """``"channel"`` → ``None`` (measured per channel); a positive number → that fixed scale."""
    if norm == "channel":
        return None
    try:
        value = float(norm)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DiffrepError(f"--latent-norm {norm!r}: give channel (measured on the data) or a positive scale such as "
                           f"{FIXED_SCALE_SD} (SD-VAE)")
    return value


class VAESpace:
    """The latent space of ``vae`` with per-channel ``shift`` and ``scale`` (none by default: the raw posterior); after
    :meth:`prepare`, ``table`` (the cached posterior moments of the training images) lets :meth:`draw_x0` skip the
    encoder."""

    name = "vae"

    def __init__(self, vae: LoadedVAE, shift: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 norm: str = "channel", device: str | torch.device = "cpu"):
        self.vae, self.norm = vae, norm
        self.table: LatentTable | None = None
        c = vae.latent_channels
        shift = torch.zeros(c) if shift is None else shift
        scale = torch.ones(c) if scale is None else scale
        self.shift, self.scale = shift.float().view(1, -1, 1, 1), scale.float().view(1, -1, 1, 1)
        self.to(device)

    def to(self, device: str | torch.device) -> "VAESpace":
        self.device = torch.device(device)
        self.vae.vae.to(self.device)
        return self

    def x0_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return self.vae.latent_shape(image_shape)

    def prepare(self, images: torch.Tensor, hflip: bool = False, cache: bool = True, progress: bool = True) -> None:
        """Ready the space for training on ``images``: the table of their posterior moments (from the latent cache,
        built if missing) sets the normalisation; with ``cache`` it also replaces the encoder in :meth:`draw_x0`
        (``False``: every batch is encoded on the fly, with the same draws)."""
        table = latent_table(self.moments, images, self.vae.sha256, hflip, progress=progress)
        fixed = parse_norm(self.norm)
        if fixed is None:
            shift, scale = channel_stats(table)
        else:
            shift, scale = torch.zeros(self.vae.latent_channels), torch.full((self.vae.latent_channels,), 1.0 / fixed)
        self.shift, self.scale = shift.view(1, -1, 1, 1), scale.view(1, -1, 1, 1)
        self.table = table if cache else None

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior mean and std of ``uint8`` images, float32 on the CPU (computed in chunks, in float32)."""
        means, stds = [], []
        for start in range(0, len(images), CHUNK):
            x = to_model_range(images[start:start + CHUNK]).to(self.device)
            posterior = self.vae.vae.encode(x).latent_dist
            means.append(posterior.mean.float().cpu())
            stds.append(posterior.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift) / self.scale

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images → the normalised posterior mean (deterministic)."""
        return self.normalise(self.moments(images)[0])

    def draw_x0(self, pixels: torch.Tensor, indices: torch.Tensor, flipped: torch.Tensor | None,
                generator: torch.Generator) -> torch.Tensor:
        """A training batch's ``x0``: ``z = mean + std·ε`` with ``ε`` from the step's ``generator``, normalised; the
        moments come from the cache (images ``indices``, mirrored where ``flipped``) or from encoding ``pixels``."""
        mean, std = self.table.lookup(indices, flipped) if self.table is not None else self.moments(pixels)
        return self.normalise(mean + std * torch.randn(mean.shape, generator=generator))

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Normalised latents → ``uint8`` images, decoded in chunks (bf16 autocast on CUDA, float32 elsewhere)."""
        out = []
        for start in range(0, len(x0), CHUNK // 4):
            z = x0[start:start + CHUNK // 4].float().cpu() * self.scale + self.shift
            with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
                images = self.vae.vae.decode(z.to(self.device)).sample
            out.append(to_uint8(images.float().cpu()))
        return torch.cat(out)

    def describe(self) -> dict:
        """What ``model.json`` records: enough to rebuild this space for sampling (:func:`space_from_record`)."""
        return {"name": self.name, "vae": self.vae.source, "vae_sha256": self.vae.sha256, "norm": self.norm,
                "shift": self.shift.flatten().tolist(), "scale": self.scale.flatten().tolist()}


def open_vae_space(source: str, image_shape: tuple[int, int, int], norm: str = "channel",
                   device: str | torch.device = "cpu") -> VAESpace:
    """The latent space of the VAE at ``source`` for ``image_shape`` images (a one-line error when the VAE does not fit
    them), not yet normalised: :meth:`VAESpace.prepare` measures the normalisation on the training images."""
    parse_norm(norm)
    vae = load_vae(source)
    vae.latent_shape(image_shape)
    return VAESpace(vae, norm=norm, device=device)


def recorded_vae(record: dict, run: Path | str, role: str) -> LoadedVAE:
    """The VAE a run recorded (``record``'s ``vae`` and ``vae_sha256``); ``role`` says what the run used it for, in the
    one-line error when the VAE is gone or has changed since."""
    source = record["vae"]
    try:
        vae = load_vae(source)
    except DiffrepError as e:
        raise DiffrepError(f"{run} was trained {role} {source}, which cannot be loaded now ({e}); put the VAE back "
                           "there to sample or read this run") from None
    if vae.sha256 != record["vae_sha256"]:
        raise DiffrepError(f"{run} was trained {role} {source}, whose weights have changed since (SHA-256 "
                           f"{vae.sha256[:12]}… ≠ {record['vae_sha256'][:12]}…): restore that VAE")
    return vae


def space_from_record(record: dict, run: Path | str, device: str | torch.device = "cpu") -> VAESpace:
    """The space a latent run was trained in (``model.json``'s ``space``); a one-line error when its VAE is gone or
    has changed since."""
    vae = recorded_vae(record, run, "in the latent space of the VAE")
    return VAESpace(vae, torch.tensor(record["shift"]), torch.tensor(record["scale"]), record["norm"], device=device)
