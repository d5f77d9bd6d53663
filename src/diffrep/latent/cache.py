"""The latent cache: each image's posterior **mean and std** under a VAE (and those of its mirror image when the run
flips), so that training draws a **fresh latent every step** without running the encoder.

Caches elsewhere freeze one posterior sample and one random flip per image (fast-DiT; REPA issue #19; MAR issues #24,
#52); here the step's own generator draws both the flip and ``z = mean + std·ε``, exactly as encoding on the fly does.

The key is a SHA-256 of the images' bytes and shape, the VAE's weights and whether mirror images are stored; another
VAE or other data misses and is recomputed, never reused.  The normalisation is not part of the entry: it is computed
from it (:func:`channel_stats`).  Building is sharded under ``torchrun`` (rank ``r`` of ``W`` encodes the chunks
``j ≡ r (mod W)``) and resumable: each chunk is its own file under ``<key>.parts/`` until rank 0 joins them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from diffrep import distributed
from diffrep.evaluation.features import default_cache_dir, images_sha256
from diffrep.io import atomic_write

CHUNK = 256
"""Images per cache chunk (and per encoder batch)."""


class LatentTable(NamedTuple):
    """Posterior moments of a dataset, ``N×c×h×w`` float32; ``flip_*`` those of the mirror images (or ``None``)."""

    mean: torch.Tensor
    std: torch.Tensor
    flip_mean: torch.Tensor | None = None
    flip_std: torch.Tensor | None = None

    def lookup(self, indices: torch.Tensor, flipped: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The moments of images ``indices``, of the mirror image where ``flipped``."""
        mean, std = self.mean[indices], self.std[indices]
        if flipped is None or not bool(flipped.any()):
            return mean, std
        if self.flip_mean is None:
            raise ValueError("this latent table holds no mirror images: build it with hflip=True")
        f = flipped[:, None, None, None]
        return torch.where(f, self.flip_mean[indices], mean), torch.where(f, self.flip_std[indices], std)


def latent_cache_key(images: torch.Tensor, vae_sha256: str, hflip: bool) -> str:
    spec = json.dumps({"images": images_sha256(images), "vae": vae_sha256, "hflip": hflip, "dtype": "fp32"},
                      sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()


def channel_stats(table: LatentTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the latents ``z ~ N(mean, std²)`` over the data (and its mirror images): the
    exact moments of that mixture, so no draw is involved."""
    means = [table.mean] + ([table.flip_mean] if table.flip_mean is not None else [])
    stds = [table.std] + ([table.flip_std] if table.flip_std is not None else [])
    m = torch.cat(means).double()
    s = torch.cat(stds).double()
    mu = m.mean(dim=(0, 2, 3))
    second = (s.pow(2) + m.pow(2)).mean(dim=(0, 2, 3))
    return mu.float(), (second - mu.pow(2)).clamp_min(1e-12).sqrt().float()


def latent_table(moments, images: torch.Tensor, vae_sha256: str, hflip: bool, root: Path | None = None,
                 progress: bool = True) -> LatentTable:
    """The table of ``images`` (``uint8 N×C×H×W``) from the cache, built first if missing.

    ``moments(images) -> (mean, std)`` is the VAE's posterior (:meth:`VAESpace.moments`).  Every rank returns the
    whole table."""
    from safetensors.torch import load_file, save

    root = Path(root) if root else default_cache_dir("latents")
    key = latent_cache_key(images, vae_sha256, hflip)
    final, parts = root / f"{key}.safetensors", root / f"{key}.parts"
    world = distributed.current()
    if not _readable(final):
        parts.mkdir(parents=True, exist_ok=True)
        todo = [j for j in range(-(-len(images) // CHUNK)) if j % world.size == world.rank
                and not _readable(parts / f"{j:06d}.safetensors")]
        for j in tqdm(todo, desc="latent cache", unit="chunk", disable=not (progress and world.is_main)):
            chunk = images[j * CHUNK:(j + 1) * CHUNK]
            tensors = dict(zip(("mean", "std"), moments(chunk)))
            if hflip:
                tensors.update(zip(("flip_mean", "flip_std"), moments(chunk.flip(-1))))
            with atomic_write(parts / f"{j:06d}.safetensors") as f:
                f.write(save({k: v.contiguous() for k, v in tensors.items()}))
        distributed.barrier()
        if world.is_main:
            chunks = [load_file(str(p)) for p in sorted(parts.glob("*.safetensors"))]
            joined = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
            meta = {"n": str(len(images)), "vae": vae_sha256, "hflip": str(hflip)}
            with atomic_write(final) as f:
                f.write(save(joined, metadata=meta))
            shutil.rmtree(parts, ignore_errors=True)
        distributed.barrier()
    t = {k: v.clone() for k, v in load_file(str(final)).items()}   # in memory: not a map of a file that may change
    return LatentTable(t["mean"], t["std"], t.get("flip_mean"), t.get("flip_std"))


def _readable(path: Path) -> bool:
    """Whether a cache file is there and whole (a damaged one is recomputed)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return bool(list(f.keys()))
    except (SafetensorError, OSError):
        return False
