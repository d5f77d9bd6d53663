"""Restoration tasks: a name and options → a seeded :class:`~diffrep.inverse.operators.Operator` for a data shape.

``--task-opt key=value`` sets an option; every option is checked against the data, with a one-line
error naming the option and the valid range.  Masks and kernels are drawn from ``seed`` (per image
``i`` from ``(seed, i)`` for random masks), so a result can always be reproduced and its parameters
are saved beside it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffrep.errors import DiffrepError
from diffrep.inverse.operators import Convolution, Kronecker, Mask, Operator
from diffrep.rng import keyed_generator

TASKS: dict[str, tuple[str, dict[str, float]]] = {
    "denoise": ("y = x + σ_y·n", {}),
    "inpaint-box": ("a centred box of size×size pixels is missing", {"size": 16}),
    "inpaint-random": ("a random fraction of the pixels is missing, one mask per image", {"fraction": 0.7}),
    "sr2": ("super-resolution ×2 (mode: avgpool or bicubic)", {"factor": 2, "mode": "avgpool"}),
    "sr4": ("super-resolution ×4 (mode: avgpool or bicubic)", {"factor": 4, "mode": "avgpool"}),
    "deblur-gauss": ("separable Gaussian blur, reflect boundary", {"sigma": 1.5, "size": 0}),
    "deblur-motion": ("a line (motion) kernel at a seeded random angle", {"size": 7}),
    "colorize": ("y = the mean of the three colour channels", {}),
}
"""``name: (what it measures, default options)``; ``size 0`` for Gaussian blur means ``2·⌈3σ⌉ + 1``."""


def task_options(task: str, given: dict[str, str]) -> dict:
    """The task's options: its defaults overridden by ``given`` (``--task-opt`` strings), typed like the defaults."""
    if task not in TASKS:
        raise DiffrepError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    defaults = TASKS[task][1]
    opts = dict(defaults)
    for key, text in given.items():
        if key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise DiffrepError(f"--task-opt {key}={text}: {task} has no option {key!r} (its options: {valid})")
        kind = type(defaults[key])
        try:
            opts[key] = kind(text) if kind is not int else int(text)
        except ValueError:
            raise DiffrepError(f"--task-opt {key}={text}: expected a {kind.__name__}") from None
    return opts


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DiffrepError(message)


def make_operator(task: str, shape: tuple[int, int, int], n: int, opts: dict, seed: int = 0) -> Operator:
    """The operator of ``task`` for ``n`` images of ``shape`` (C×H×W) with options ``opts`` (:func:`task_options`)."""
    c, h, w = shape
    if task == "denoise":
        return Kronecker(task, shape, (None, None, None))
    if task == "colorize":
        _require(c == 3, f"colorize needs RGB data, but the images have {c} channel(s): pick another --task")
        return Kronecker(task, shape, (torch.full((1, 3), 1 / 3), None, None))
    if task.startswith("sr"):
        f, mode = opts["factor"], opts["mode"]
        _require(f >= 2 and h % f == 0 and w % f == 0,
                 f"--task-opt factor={f}: the factor must be ≥ 2 and divide the image size {h}×{w}")
        _require(mode in ("avgpool", "bicubic"), f"--task-opt mode={mode}: choose avgpool or bicubic")
        return Kronecker(f"{task}-{mode}", shape, (None, _downsample(h, f, mode), _downsample(w, f, mode)))
    if task == "deblur-gauss":
        sigma = opts["sigma"]
        size = opts["size"] or 2 * math.ceil(3 * sigma) + 1
        _require(sigma > 0, f"--task-opt sigma={sigma}: the blur's σ must be positive")
        _require(size % 2 == 1 and size <= min(h, w),
                 f"--task-opt size={size}: the kernel must be odd and no larger than the image ({h}×{w})")
        return Kronecker(task, shape, (None, _blur_matrix(h, size, sigma), _blur_matrix(w, size, sigma)))
    if task == "deblur-motion":
        size = opts["size"]
        _require(size % 2 == 1 and 3 <= size <= min(h, w),
                 f"--task-opt size={size}: the kernel must be odd, ≥ 3 and no larger than the image ({h}×{w})")
        return Convolution(task, _motion_kernel(size, seed), shape)
    if task == "inpaint-box":
        size = opts["size"]
        _require(0 < size < min(h, w), f"--task-opt size={size}: the box must be 1…{min(h, w) - 1} pixels")
        mask = torch.ones(n, 1, h, w)
        top, left = (h - size) // 2, (w - size) // 2
        mask[:, :, top: top + size, left: left + size] = 0
        return Mask(task, mask, c)
    if task == "inpaint-random":
        frac = opts["fraction"]
        _require(0 < frac < 1, f"--task-opt fraction={frac}: the missing fraction must lie in (0, 1)")
        masks = [(torch.rand(1, h, w, generator=keyed_generator(seed, i)) >= frac).float() for i in range(n)]
        return Mask(task, torch.stack(masks), c)
    raise DiffrepError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")


def _downsample(n: int, factor: int, mode: str) -> torch.Tensor:
    """The ``n/factor × n`` matrix of 1-D average pooling or of torch's antialiased bicubic downsampling."""
    if mode == "avgpool":
        return torch.kron(torch.eye(n // factor), torch.full((1, factor), 1 / factor))
    # n images of n×2 (a basis vector in each column): torch's resize of a one-pixel-wide image differs from
    # the same column inside a wider one, so the matrix is read from two-pixel-wide images
    deltas = torch.eye(n, dtype=torch.float64)[:, None, :, None].expand(n, 1, n, 2)
    out = F.interpolate(deltas, size=(n // factor, 2), mode="bicubic", antialias=True, align_corners=False)
    return out[:, 0, :, 0].T.float()


def _blur_matrix(n: int, size: int, sigma: float) -> torch.Tensor:
    """The ``n×n`` matrix of 1-D Gaussian blur (kornia's kernel) with reflect boundary."""
    from kornia.filters import get_gaussian_kernel1d

    kernel = get_gaussian_kernel1d(size, sigma, dtype=torch.float64)[0]
    deltas = F.pad(torch.eye(n, dtype=torch.float64)[:, None, :], (size // 2, size // 2), mode="reflect")
    return F.conv1d(deltas, kernel.flip(0)[None, None])[:, 0, :].T.float()


def _motion_kernel(size: int, seed: int) -> torch.Tensor:
    """A normalised line kernel (kornia) at an angle drawn from ``seed``."""
    from kornia.filters import get_motion_kernel2d

    angle = float(torch.rand(1, generator=keyed_generator(seed, 1 << 20)) * 180.0)
    return get_motion_kernel2d(size, angle)[0].float()
