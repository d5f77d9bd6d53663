"""Resize modes for encoders, explicit because they move FID (clean-fid, arXiv 2104.11222).

All modes take float images in [0, 1] (``N×C×H×W``) and return float images; none re-quantizes.

- ``clean``: PIL bicubic on float32 per channel, antialiased when shrinking (clean-fid's choice);
- ``bilinear-tf``: TensorFlow 1's ``resize_bilinear`` (corner-aligned source grid ``src = dst·in/out``,
  no half-pixel offset, no antialias), as the TF Inception FID code and the ADM evaluator resize;
- ``bilinear``: ``F.interpolate`` bilinear, half-pixel centres, no antialias (pytorch-fid);
- ``bicubic``: ``F.interpolate`` bicubic with antialias (torchvision ``Resize`` on tensors);
- ``none``: no resizing; the images must already have the encoder's input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffrep.errors import DiffrepError

RESIZE_MODES = ("clean", "bilinear-tf", "bilinear", "bicubic", "none")


def _clean(x: torch.Tensor, size: int) -> torch.Tensor:
    out = np.empty((*x.shape[:2], size, size), dtype=np.float32)
    arr = x.float().cpu().numpy()
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[i, c], mode="F").resize((size, size), Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(img)
    return torch.from_numpy(out).to(x.device)


def _bilinear_tf(x: torch.Tensor, size: int) -> torch.Tensor:
    n, _, h, w = x.shape

    def axis(n_in: int) -> torch.Tensor:   # normalised coords for grid_sample(align_corners=True)
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        return (2 * src / max(n_in - 1, 1) - 1).float()

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], -1).to(x.device).expand(n, size, size, 2)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


def resize(x: torch.Tensor, size: int | None, mode: str) -> torch.Tensor:
    """``x`` (float, [0, 1], ``N×C×H×W``) resized to ``size×size`` by ``mode``; unchanged when already that size."""
    if mode not in RESIZE_MODES:
        raise DiffrepError(f"unknown resize mode {mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    if size is None or x.shape[-2:] == (size, size):
        return x
    if mode == "none":
        raise DiffrepError(f"images are {x.shape[-2]}×{x.shape[-1]} but the encoder takes {size}×{size} and its "
                           "resize mode is 'none': pass --resize clean (or another mode)")
    if mode == "clean":
        return _clean(x, size)
    if mode == "bilinear-tf":
        return _bilinear_tf(x, size)
    return F.interpolate(x.float(), size=(size, size), mode=mode, align_corners=False, antialias=mode == "bicubic")
