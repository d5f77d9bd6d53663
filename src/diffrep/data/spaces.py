"""Spaces: where the net works.  A space encodes a batch of images into what the net sees (``x0``) and
decodes samples back into images.

Two spaces: the pixel space (the identity up to the [-1, 1] scaling) and a VAE's latent space
(:mod:`diffrep.latent`, ``--space vae:PATH``).  The trainer keeps the pixels beside ``x0`` in each batch
(plug-ins such as REPA read them) and generation decodes through the space, so the samplers, plug-ins
and evaluation stay unchanged.  A run records its space in ``model.json`` (:meth:`Space.describe`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from diffrep.data.images import to_model_range, to_uint8
from diffrep.errors import DiffrepError


class Space(Protocol):
    name: str

    def x0_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The shape of ``x0`` for images of ``image_shape`` (C×H×W)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 N×C×H×W`` images → the net's ``x0`` (deterministic)."""

    def draw_x0(self, pixels: torch.Tensor, indices: torch.Tensor, flipped: torch.Tensor | None,
                generator: torch.Generator) -> torch.Tensor:
        """A training batch's ``x0`` from its (already flipped) ``pixels``, which are the data's images ``indices``
        (mirrored where ``flipped``); a space that draws (a VAE's posterior) draws from ``generator``."""

    def prepare(self, images: torch.Tensor, hflip: bool = False, cache: bool = True, progress: bool = True) -> None:
        """Ready the space to draw training batches of ``images`` (a VAE's space measures its normalisation and reads
        or builds the latent cache)."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The net's ``x0`` (a sample) → ``uint8`` images."""

    def describe(self) -> dict:
        """The record a run keeps in ``model.json`` to rebuild the space (:func:`space_from_record`)."""


class PixelSpace:
    """Pixels in [-1, 1]: ``x0`` is the image itself."""

    name = "pixels"

    def x0_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return image_shape

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_range(images)

    def draw_x0(self, pixels: torch.Tensor, indices: torch.Tensor, flipped: torch.Tensor | None,
                generator: torch.Generator) -> torch.Tensor:
        return to_model_range(pixels)

    def prepare(self, images: torch.Tensor, hflip: bool = False, cache: bool = True, progress: bool = True) -> None:
        pass

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return to_uint8(x0)

    def describe(self) -> dict:
        return {"name": self.name}


def check_space_spec(spec: str) -> None:
    """``pixels`` or ``vae:SOURCE``, else a one-line error."""
    if spec != "pixels" and not (spec.startswith("vae:") and len(spec) > 4):
        raise DiffrepError(f"--space {spec!r}: give pixels or vae:PATH (a diffrep VAE run, a diffusers AutoencoderKL "
                           "folder or a hub name)")


def space_from_record(record: dict | None, run: Path | str, device: str | torch.device = "cpu") -> Space:
    """The space a run was trained in, from ``model.json``'s ``space`` (runs without one are pixel runs)."""
    if record is None or record.get("name") == "pixels":
        return PixelSpace()
    if record.get("name") != "vae":
        raise DiffrepError(f"{run}/model.json names an unknown space {record.get('name')!r}: this diffrep knows pixels "
                           "and vae")
    from diffrep.latent.space import space_from_record as vae_space

    return vae_space(record, run, device)


def open_space(spec: str, image_shape: tuple[int, int, int], *, norm: str = "channel",
               device: str | torch.device = "cpu") -> Space:
    """The space ``spec`` (``pixels`` or ``vae:SOURCE``) for images of ``image_shape``; a one-line error when it does
    not fit them.  Training then calls its ``prepare`` (:func:`diffrep.latent.space.open_vae_space`)."""
    check_space_spec(spec)
    if spec == "pixels":
        return PixelSpace()
    from diffrep.latent.space import open_vae_space

    return open_vae_space(spec[4:], image_shape, norm, device)


def open_image_condition(vae: str, image_shape: tuple[int, int, int], device: str | torch.device = "cpu"):
    """A DiffuseVAE run's conditioning images (``--diffusevae VAE``; :mod:`diffrep.latent.diffusevae`), or ``None``
    where ``vae`` is empty; training then calls its ``prepare``."""
    if not vae:
        return None
    from diffrep.latent.diffusevae import open_reconstructions

    return open_reconstructions(vae, image_shape, device)
