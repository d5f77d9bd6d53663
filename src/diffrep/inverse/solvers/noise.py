"""Noise draws for solvers: from CPU generators, so results do not depend on the device.

A solver receives one ``torch.Generator`` for its whole batch, or :class:`RowGenerators` — one generator per
image — with which a restoration does not depend on the batch it was computed in.
"""

from __future__ import annotations

import torch


class RowGenerators:
    """One generator per batch row: row ``i``'s noise comes from ``generators[i]`` alone."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in self.generators])


def randn(like: torch.Tensor, generator: torch.Generator | RowGenerators) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape, dtype and device."""
    if isinstance(generator, RowGenerators):
        return generator.randn(tuple(like.shape)).to(like)
    return torch.randn(like.shape, generator=generator).to(like)


def start(prior, op, y: torch.Tensor, generator: torch.Generator | RowGenerators, steps: int,
          **grid) -> tuple[list[float], torch.Tensor]:
    """The noise-level grid of ``steps`` levels (``grid``: :meth:`Prior.levels` options) and pure noise at its first
    level, shaped as the images behind ``y``: where every sampling solver begins."""
    levels = prior.levels(steps, **grid)
    return levels, levels[0] * randn(op.zeros(y), generator)
