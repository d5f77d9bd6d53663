"""Each step's global batch as a pure function of ``(seed, step)``: the data order, the draws, the slicing.

Every random draw of step ``s`` (data order, times, noise, label dropout, flips) comes from
generators seeded by ``(seed, s)`` for the *global* batch, which each process then slices, so the
trajectory does not depend on how the batch is split into micro-batches or processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffrep.config import TrainConfig
from diffrep.data import ImageSet, PixelSpace, Space
from diffrep.loss import Batch
from diffrep.nets import NULL_LABEL
from diffrep.rng import keyed_generator

if TYPE_CHECKING:
    from diffrep.latent.diffusevae import Reconstructions

BATCH_STREAM, EPOCH_STREAM, WARMUP_STREAM, PLUGIN_STREAM, OBJECTIVE_STREAM = 0, 1, 2, 3, 4
"""Streams of :func:`step_generator`: the batch's draws, the epoch permutation, the draws of a plug-in's
warm-up batches (:meth:`Plugin.initialize`), the plug-ins' draws of the step, the objective's draws of the step."""


def step_generator(seed: int, step: int, stream: int = BATCH_STREAM) -> torch.Generator:
    """The generator for one step's draws: a pure function of ``(seed, step, stream)``."""
    return keyed_generator(seed, step, stream)


class EpochSampler:
    """Stateless data order: epoch ``e`` is ``randperm(N)`` seeded by ``(seed, e)``; step ``s`` takes the next ``B``."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.n, generator=step_generator(self.seed, epoch, EPOCH_STREAM))}
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.n)
            take = min(self.batch_size - len(out), self.n - offset)
            out.extend(self._perm(epoch)[offset: offset + take].tolist())
        return torch.tensor(out, dtype=torch.long)


def draw_batch(data: ImageSet, indices: torch.Tensor, cfg: TrainConfig, process, step: int,
               stream: int = BATCH_STREAM, space: Space | None = None,
               condition: Reconstructions | None = None, embeddings: torch.Tensor | None = None) -> Batch:
    """The global batch of step ``step`` with all its randomness; ``x0`` is drawn by ``space`` from the (flipped) pixels
    (the pixel space by default; a VAE's latent space draws a fresh latent from the posterior); a DiffuseVAE run's
    ``condition`` adds the (flipped) images' reconstructions; an embedding-conditioned run's ``embeddings`` (one per
    image) are the condition instead of the labels, the zero vector where dropped."""
    g = step_generator(cfg.seed, step, stream)
    pixels = data.images[indices]
    n = pixels.shape[0]
    flip = None
    if cfg.hflip:
        flip = torch.rand(n, generator=g) < 0.5
        pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    x0 = (space or PixelSpace()).draw_x0(pixels, indices, flip, g)
    t = process.sample_time(n, g)
    noise = torch.randn(x0.shape, generator=g)
    cond = None
    if cfg.class_conditional and (data.labels is not None or embeddings is not None):
        drop = torch.rand(n, generator=g) < cfg.label_dropout
        if embeddings is None:
            cond = torch.where(drop, NULL_LABEL, data.labels[indices])
        else:
            cond = torch.where(drop[:, None], 0.0, embeddings[indices])
    image = None if condition is None else condition.draw(indices, flip)
    return Batch(x0, cond, t, noise, pixels=pixels, image=image)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to ``device``; to a GPU through pinned memory without blocking, so the host draws the
    next batch while the GPU still runs this step (PyTorch keeps the pinned buffer until the copy ends)."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def slice_batch(batch: Batch, sl: slice, device: torch.device) -> Batch:
    """Rows ``sl`` of a global batch, on ``device``."""
    def part(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else to_device(x[sl], device)

    return Batch(part(batch.x0), part(batch.cond), part(batch.t), part(batch.noise), pixels=part(batch.pixels),
                 image=part(batch.image))
