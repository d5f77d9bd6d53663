"""Random generators keyed by integers, so every random draw is a pure function of where it is used."""

from __future__ import annotations

import numpy as np
import torch


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` through NumPy's ``SeedSequence``: distinct for distinct keys."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
