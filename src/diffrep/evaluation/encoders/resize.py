"""Resize modes for encoders, explicit because they move FID (clean-fid, arXiv 2104.11222).

Every mode takes ``uint8 N×C×H×W`` images and returns float32 images in [0, 1]; each reproduces the tool named
in :data:`RESIZE_REFERENCES`, whose scaling of the input (done by the encoder) is part of the same pair:

- ``clean``: PIL bicubic on float32 per channel (antialiased when shrinking), clipped to [0, 255], not
  re-quantised: clean-fid's ``mode="clean"`` resize, and dgm-eval's ``--clean_resize``;
- ``pil-bicubic``: PIL bicubic on the uint8 image, which rounds and clips to 0–255 (torchvision's ``Resize`` on a
  PIL image): dgm-eval's default for DINOv2 and CLIP;
- ``bilinear-tf``: TensorFlow 1's ``resize_bilinear`` (corner-aligned source grid ``src = dst·in/out``, no
  half-pixel offset, no antialias): the TF FID code, torch-fidelity and the ADM evaluator;
- ``bilinear``: ``F.interpolate`` bilinear, half-pixel centres, no antialias: pytorch-fid;
- ``bicubic``: ``F.interpolate`` bicubic with antialias, on floats, unclipped (torchvision ``Resize`` on tensors);
- ``none``: no resizing; the images must already have the encoder's input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffrep.errors import DiffrepError

RESIZE_MODES = ("clean", "pil-bicubic", "bilinear-tf", "bilinear", "bicubic", "none")

RESIZE_REFERENCES: dict[str, str] = {
    "clean": "clean-fid 0.1.35 mode='clean' (resize: PIL 'F' bicubic, clip [0, 255]; = dgm-eval --clean_resize)",
    "pil-bicubic": "dgm-eval 2023 (torchvision Resize on a uint8 PIL image: PIL bicubic, rounded and clipped)",
    "bilinear-tf": "TF FID graph / torch-fidelity 0.4.0 / ADM evaluator (TF1 resize_bilinear, align_corners=False)",
    "bilinear": "pytorch-fid 0.3.0 (F.interpolate bilinear, align_corners=False)",
    "bicubic": "torchvision Resize on float tensors (F.interpolate bicubic, antialias)",
    "none": "no resize",
}
"""The implementation (and version checked against) that each mode reproduces; written into every result."""


def _clean(x: torch.Tensor, size: int) -> torch.Tensor:
    arr = x.float().cpu().numpy()
    out = np.empty((*arr.shape[:2], size, size), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[i, c], mode="F").resize((size, size), Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(img)
    return torch.from_numpy(out.clip(0, 255) / np.float32(255)).to(x.device)


def _pil_bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    arr = np.ascontiguousarray(x.cpu().permute(0, 2, 3, 1).numpy())
    out = np.empty((arr.shape[0], size, size, arr.shape[3]), dtype=np.uint8)
    for i, image in enumerate(arr):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC)).reshape(size, size, -1)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255).to(x.device)


def _bilinear_tf(x: torch.Tensor, size: int) -> torch.Tensor:
    n, _, h, w = x.shape

    def axis(n_in: int) -> torch.Tensor:   # normalised coords for grid_sample(align_corners=True)
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        return (2 * src / max(n_in - 1, 1) - 1).float()

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], -1).to(x.device).expand(n, size, size, 2)
    return F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="border", align_corners=True)


def resize(images: torch.Tensor, size: int | None, mode: str) -> torch.Tensor:
    """``images`` (``uint8 N×C×H×W``) as float32 in [0, 1], resized to ``size×size`` by ``mode`` (unchanged in size
    when already that size)."""
    if mode not in RESIZE_MODES:
        raise DiffrepError(f"unknown resize mode {mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    if size is None or images.shape[-2:] == (size, size):
        return images.float() / 255
    if mode == "none":
        raise DiffrepError(f"images are {images.shape[-2]}×{images.shape[-1]} but the encoder takes {size}×{size} and "
                           "its resize mode is 'none': pass --resize clean (or another mode)")
    if mode == "clean":
        return _clean(images, size)
    if mode == "pil-bicubic":
        return _pil_bicubic(images, size)
    if mode == "bilinear-tf":
        return _bilinear_tf(images, size)
    return F.interpolate(images.float() / 255, size=(size, size), mode=mode, align_corners=False,
                         antialias=mode == "bicubic")
