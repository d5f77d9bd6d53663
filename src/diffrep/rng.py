"""Random generators keyed by integers, so every random draw is a pure function of where it is used."""

from __future__ import annotations

import numpy as np
import torch


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` through NumPy's ``SeedSequence``: distinct for distinct keys."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class BatchDraws:
    """Random draws for rows ``rows`` of a global batch of ``size`` rows.

    Each draw is made for the whole batch from ``generator`` and then sliced, so row ``i``'s
    values do not depend on how the batch is split over processes and micro-batches — as long
    as every part makes the same draws in the same order from a generator with the same seed.
    """

    def __init__(self, generator: torch.Generator, size: int, rows: slice = slice(None)):
        self.generator, self.size, self.rows = generator, size, rows

    def uniform(self, *shape: int) -> torch.Tensor:
        """U(0, 1) of shape ``(rows, *shape)``."""
        return torch.rand(self.size, *shape, generator=self.generator)[self.rows]

    def normal(self, *shape: int) -> torch.Tensor:
        """N(0, 1) of shape ``(rows, *shape)``."""
        return torch.randn(self.size, *shape, generator=self.generator)[self.rows]

    def shared_uniform(self) -> float:
        """One U(0, 1) value for the whole batch."""
        return float(torch.rand((), generator=self.generator))
