"""Spaces: where the net works.  A space encodes a batch of images into what the net sees (``x0``) and
decodes samples back into images.

Today's space is the pixel space (the identity up to the [-1, 1] scaling).  A VAE's latent space
(``encode``: the autoencoder's scaled latent mean; ``decode``: its decoder) and 1-D series join here
with the same two methods, so the trainer, the samplers and evaluation stay unchanged: the trainer
keeps the pixels beside ``x0`` in each batch (plug-ins such as REPA read them), and generation
decodes through the space.
"""

from __future__ import annotations

from typing import Protocol

import torch

from diffrep.data.images import to_model_range, to_uint8
from diffrep.errors import DiffrepError


class Space(Protocol):
    name: str

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 N×C×H×W`` images → the net's ``x0``."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The net's ``x0`` (a sample) → ``uint8`` images."""


class PixelSpace:
    """Pixels in [-1, 1]: ``x0`` is the image itself."""

    name = "pixels"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_range(images)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return to_uint8(x0)


SPACES = {"pixels": PixelSpace}


def get_space(name: str = "pixels") -> Space:
    if name not in SPACES:
        raise DiffrepError(f"unknown space {name!r}: choose one of {', '.join(SPACES)}")
    return SPACES[name]()
