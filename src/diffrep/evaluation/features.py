"""Feature extraction with a content-addressed cache, sharded over ``torchrun`` ranks.

The cache key is a SHA-256 of the images' bytes and shape, the encoder's full spec
(name, weights hash, input size, resize mode, normalisation, layer) and the compute
dtype — change any of them and the cache misses.  Entries are safetensors files
written atomically, so two evaluations running at once never see a torn file.

Images are cut into fixed batches ``j``; under torchrun rank ``r`` of ``W`` encodes the
batches ``j ≡ r (mod W)``, so every image goes through the same batch for any ``W``
and the features are identical on 1, 2 or N processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from diffrep import distributed
from diffrep.evaluation.encoders import Encoded, Encoder
from diffrep.io import atomic_write

DTYPES = ("fp32", "bf16")


def default_cache_dir(kind: str = "features") -> Path:
    """``$DIFFREP_CACHE/<kind>``, else ``~/.cache/diffrep/<kind>`` (``features``, ``latents``)."""
    root = os.environ.get("DIFFREP_CACHE") or Path.home() / ".cache" / "diffrep"
    return Path(root) / kind


def images_sha256(images: torch.Tensor) -> str:
    """Content hash of a ``uint8`` image tensor (shape and bytes)."""
    h = hashlib.sha256(f"{tuple(images.shape)}|{images.dtype}|".encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(images: torch.Tensor, encoder: Encoder, dtype: str) -> str:
    spec = json.dumps({"images": images_sha256(images), "encoder": encoder.spec.as_dict(), "dtype": dtype},
                      sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()


class FeatureCache:
    """Encoded sets stored as ``<key>.safetensors`` under ``root``."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> Encoded | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError):
            return None            # unreadable entry: recompute and overwrite it
        return Encoded(tensors["features"], tensors.get("logits"))

    def save(self, key: str, encoded: Encoded, meta: dict) -> None:
        from safetensors.torch import save

        tensors = {"features": encoded.features.contiguous()}
        if encoded.logits is not None:
            tensors["logits"] = encoded.logits.contiguous()
        with atomic_write(self.path(key)) as f:
            f.write(save(tensors, metadata={"meta": json.dumps(meta, sort_keys=True)}))


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, torch.bfloat16)


def _encode_batches(encoder: Encoder, images: torch.Tensor, batch_size: int, dtype: str, device: torch.device,
                    progress: bool) -> dict[int, Encoded]:
    world = distributed.current()
    mine = [j for j in range(-(-len(images) // batch_size)) if j % world.size == world.rank]
    out = {}
    with _autocast(device, dtype):
        for j in tqdm(mine, desc=f"features {encoder.spec.name}", unit="batch", disable=not progress):
            e = encoder(images[j * batch_size:(j + 1) * batch_size].to(device))
            out[j] = Encoded(e.features.cpu(), None if e.logits is None else e.logits.cpu())
    return out


def _join(parts: list[dict[int, Encoded]]) -> Encoded:
    batches = {j: e for part in parts for j, e in part.items()}
    ordered = [batches[j] for j in sorted(batches)]
    logits = None if ordered[0].logits is None else torch.cat([e.logits for e in ordered])
    return Encoded(torch.cat([e.features for e in ordered]), logits)


def extract_features(encoder: Encoder, images: torch.Tensor, *, batch_size: int = 100, dtype: str = "fp32",
                     device: str | torch.device = "cpu", cache: FeatureCache | None = None,
                     progress: bool = True) -> Encoded | None:
    """Features of ``uint8`` images; from the cache when there, else computed (sharded over ranks) and cached.

    Returns the features on rank 0 and ``None`` on the other ranks.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    world = distributed.current()
    key = cache_key(images, encoder, dtype) if cache is not None else None
    hit = cache.load(key) if cache is not None and world.is_main else None
    if distributed.broadcast_from_main(hit is not None):     # every rank must agree whether to compute
        return hit if world.is_main else None
    device = torch.device(device)
    encoder = encoder.to(device)
    parts = distributed.gather_to_main(_encode_batches(encoder, images, batch_size, dtype, device,
                                                       progress and world.is_main))
    if not world.is_main:
        return None
    encoded = _join(parts)
    if cache is not None:
        cache.save(key, encoded, {"encoder": encoder.spec.as_dict(), "dtype": dtype, "n": len(images)})
    return encoded
