"""Draw many samples from a trained model, reproducibly and in chunks.

Chunk ``j`` (images ``j·B … (j+1)·B − 1``) uses a generator seeded by ``(seed, j)``, so
image ``i`` is the same whatever process draws it and however many processes share
the work, as long as the chunk size ``B`` is the same.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from diffrep.data import to_uint8
from diffrep.errors import DiffrepError
from diffrep.guidance import ClassifierFreeGuidance
from diffrep.rng import keyed_generator
from diffrep.samplers import get_sampler, initial_noise


def make_labels(spec: str | int | None, n: int, num_classes: int, seed: int = 0) -> torch.Tensor | None:
    """``balanced`` (image i shows class i mod C), ``random``, a single class index, or ``None`` (unconditional)."""
    if num_classes == 0 and spec not in (None, "none", "balanced"):
        raise DiffrepError(f"--labels {spec}: the run is unconditional (trained without labels); drop --labels")
    if num_classes == 0 or spec is None or spec == "none":
        return None
    if spec == "balanced":
        return torch.arange(n) % num_classes
    if spec == "random":
        return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))
    try:
        c = int(spec)
    except ValueError:
        raise DiffrepError(f"--labels {spec!r}: use balanced, random, none or a class index 0…{num_classes - 1}") from None
    if not 0 <= c < num_classes:
        raise DiffrepError(f"--labels {c}: class index out of range 0…{num_classes - 1}")
    return torch.full((n,), c, dtype=torch.long)


@torch.no_grad()
def generate(net: torch.nn.Module, process, shape: tuple[int, int, int], n: int, *, sampler: str = "euler", steps: int = 50,
             grid_rho: float | None = None, seed: int = 0, labels: torch.Tensor | None = None, cfg_scale: float = 1.0,
             cfg_interval: tuple[float, float] | None = None, batch_size: int = 250, autocast: bool = True,
             chunks: Callable[[int], bool] | None = None, progress: bool = True) -> dict[int, torch.Tensor]:
    """Samples as ``{chunk index: uint8 images}`` for the chunks ``chunks(j)`` selects (all by default)."""
    device = next(net.parameters()).device
    denoiser = process.denoiser(net, autocast)
    if cfg_scale != 1.0:
        if labels is None:
            raise DiffrepError("--cfg needs a class-conditional model and --labels")
        denoiser = ClassifierFreeGuidance(denoiser, cfg_scale, cfg_interval)
    sample = get_sampler(sampler)
    ts = process.time_grid(steps, grid_rho)
    todo = [j for j in range(-(-n // batch_size)) if chunks is None or chunks(j)]
    out = {}
    for j in tqdm(todo, desc="sample", unit="batch", disable=not progress):
        lo, hi = j * batch_size, min(n, (j + 1) * batch_size)
        g = keyed_generator(seed, j)
        x = initial_noise(process, (hi - lo, *shape), ts[0], g, device)
        cond = None if labels is None else labels[lo:hi].to(device)
        out[j] = to_uint8(sample(denoiser, x, ts, cond=cond, generator=g).cpu())
    return out
