"""Features of a trained diffusion model at (block, t), for probes (DDAE, arXiv 2303.09769;
"Diffusion Models Beat GANs on Image Classification", arXiv 2307.08702).

An image ``x0`` is noised to ``x_t = α_t·x0 + σ_t·ε`` and passed once through the net per
``t`` with every requested block tapped; each tap is pooled to a vector (``mean`` over the
spatial positions of a U-Net map or the tokens of a DiT, ``grid2``/``grid4``/``grid8`` over a coarse grid of
regions, ``flatten`` keeps everything).
Times are in the process's own units (σ for ``edm``).  The net sees the null label, so a
class-conditional model is not told the answer.

Noise: image ``i`` at time index ``j`` uses ε drawn from a generator keyed by
``(seed, i, d)`` (``resample=False``: the same ε at every t) or ``(seed, i, j, d)``
(``resample=True``), so the features do not depend on the batch size or on which
other images are in the batch.  With ``noise_draws = D`` the features are averaged over the
draws ``d = 0 … D−1`` — an ensemble over ε, as DIFT (arXiv 2306.03881) does — which removes
part of the noise a single draw leaves in them, at D forward passes per t.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffrep.data import PixelSpace, Space
from diffrep.errors import DiffrepError
from diffrep.nets import NULL_LABEL
from diffrep.processes import Process
from diffrep.rng import keyed_generator

if TYPE_CHECKING:
    from diffrep.latent.diffusevae import Reconstructions

POOLS = ("mean", "grid2", "grid4", "grid8", "flatten")


def resolve_blocks(spec: str | list[str], tap_names: tuple[str, ...]) -> tuple[str, ...]:
    """``all`` or a comma list (``block3,block5``) → validated tap names."""
    names = list(tap_names) if spec == "all" else (spec.split(",") if isinstance(spec, str) else list(spec))
    unknown = [b for b in names if b not in tap_names]
    if unknown:
        raise DiffrepError(f"unknown block(s) {', '.join(unknown)}: this net has {', '.join(tap_names)} (or 'all')")
    return tuple(names)


def pool(hidden: torch.Tensor, how: str) -> torch.Tensor:
    """``N×C×H×W`` (U-Net) or ``N×L×D`` (DiT tokens on a square grid) → ``N×features``: ``mean`` over
    positions, ``gridK`` averages over a K×K grid of regions (keeps coarse layout), ``flatten`` keeps all."""
    if how not in POOLS:
        raise DiffrepError(f"unknown pooling {how!r}: choose one of {', '.join(POOLS)}")
    if hidden.ndim == 3:                               # DiT tokens → a C×H×W map
        side = math.isqrt(hidden.shape[1])
        hidden = hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)
    if how == "flatten":
        return hidden.flatten(1)
    if how == "mean":
        return hidden.mean(dim=(2, 3))
    return F.adaptive_avg_pool2d(hidden, int(how.removeprefix("grid"))).flatten(1)


def _noise(shape: tuple[int, ...], seed: int, first_index: int, t_index: int | None, draw: int) -> torch.Tensor:
    keys = [(seed, first_index + i, draw) if t_index is None else (seed, first_index + i, t_index, draw)
            for i in range(shape[0])]
    return torch.stack([torch.randn(shape[1:], generator=keyed_generator(*k)) for k in keys])


def check_times(process: Process, times: list[float]) -> None:
    """Refuse noise levels outside the process's range ``[0, t_max]``."""
    outside = [t for t in times if not 0 <= t <= process.t_max]
    if outside:
        raise DiffrepError(f"--t {','.join(f'{t:g}' for t in outside)}: noise levels of the {process.name} process lie "
                           f"in [0, {process.t_max:g}]")


@torch.no_grad()
def diffusion_features(net: torch.nn.Module, process: Process, images: torch.Tensor, *, blocks: tuple[str, ...],
                       times: list[float], pooling: str = "mean", seed: int = 0, resample: bool = False,
                       noise_draws: int = 1, normalize: bool = False, batch_size: int = 250, autocast: bool = True,
                       progress: bool = True, space: Space | None = None,
                       condition: Reconstructions | None = None) -> dict[tuple[str, float], torch.Tensor]:
    """``{(block, t): N×D float32 features}`` of ``uint8`` images; one forward per (batch, t, draw) taps
    every block; the pooled features are averaged over the ``noise_draws`` draws of ε.  ``space`` encodes the
    images into the net's ``x0`` (the pixel space by default); a DiffuseVAE net sees each image's reconstruction by
    ``condition`` beside it."""
    if noise_draws < 1:
        raise DiffrepError(f"noise_draws must be at least 1, got {noise_draws}")
    check_times(process, times)
    space = space or PixelSpace()
    device = next(net.parameters()).device
    denoiser = process.denoiser(net, autocast)
    out: dict[tuple[str, float], list[torch.Tensor]] = {(b, t): [] for b in blocks for t in times}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="features", unit="batch", disable=not progress):
        x0 = space.encode(images[start:start + batch_size]).to(device)
        image = None if condition is None else condition.reconstruct(images[start:start + batch_size]).to(device)
        cond = torch.full((len(x0),), NULL_LABEL, device=device) if getattr(net, "num_classes", 0) else None
        shared = None if resample else [_noise(tuple(x0.shape), seed, start, None, d).to(device) for d in range(noise_draws)]
        for j, t in enumerate(times):
            tt = torch.full((len(x0),), float(t), device=device)
            mean = dict.fromkeys(blocks, 0.0)
            for d in range(noise_draws):
                eps = shared[d] if shared else _noise(tuple(x0.shape), seed, start, j, d).to(device)
                hidden = denoiser.hidden(process.corrupt(x0, tt, eps), tt, cond, blocks, image)
                for b in blocks:
                    mean[b] = mean[b] + pool(hidden[b].float(), pooling) / noise_draws
            for b in blocks:
                out[b, t].append(F.normalize(mean[b], dim=1) if normalize else mean[b])
    return {k: torch.cat(v).cpu() for k, v in out.items()}
