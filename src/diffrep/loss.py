"""The base denoising loss, per sample, for any process."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from diffrep.processes import Denoiser


@dataclass
class Batch:
    """One (micro-)batch with all of its randomness drawn up front, so plug-ins can read or transform it.

    ``x0``: what the net sees, clean (in the pixel space: images in [-1, 1]); ``cond``: labels
    (``NULL_LABEL`` where dropped) or ``None``; ``t``: times; ``noise``: ε, same shape as ``x0``;
    ``loss_weight``: optional per-element weights of the denoising loss (broadcast to ``x0``; a
    plug-in sets them); ``pixels``: the ``uint8`` images ``x0`` was encoded from (what REPA's
    encoder reads; ``None`` where a batch is built without them); ``image``: the conditioning image of a DiffuseVAE run
    (the VAE's reconstruction of ``pixels``, in [-1, 1]), else ``None``.
    """

    x0: torch.Tensor
    cond: torch.Tensor | None
    t: torch.Tensor
    noise: torch.Tensor
    loss_weight: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    image: torch.Tensor | None = None

    def replace(self, **changes) -> "Batch":
        return replace(self, **changes)


@dataclass
class LossOutput:
    """``total`` (scalar to minimise), named ``parts`` (scalars, logged), tapped hidden states and
    the net's raw output (float32)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    taps: dict[str, torch.Tensor] = field(default_factory=dict)
    raw: torch.Tensor | None = None


def denoising_loss(denoiser: Denoiser, batch: Batch, taps: tuple[str, ...] = ()) -> LossOutput:
    """MSE between the net's raw output and the process's target, averaged per sample then over the batch.

    Every process's target carries its own weighting (ε, v, velocity, or EDM's F with
    λ(σ)·c_out² = 1), so the loss is a plain mean; with ``batch.loss_weight`` it is the
    weighted mean of each sample's elements (0 where a sample's weights are all 0).
    """
    process = denoiser.process
    xt = process.corrupt(batch.x0, batch.t, batch.noise)
    raw, hidden = denoiser.raw(xt, batch.t, batch.cond, taps, batch.image)
    error = (raw - process.target(batch.x0, batch.noise, batch.t)).pow(2)
    if batch.loss_weight is None:
        per_sample = error.flatten(1).mean(1)
    else:
        weight = batch.loss_weight.expand_as(error).flatten(1)
        per_sample = (weight * error.flatten(1)).sum(1) / weight.sum(1).clamp_min(1e-12)
    loss = per_sample.mean()
    return LossOutput(loss, {"denoise": loss.detach()}, hidden, raw)
