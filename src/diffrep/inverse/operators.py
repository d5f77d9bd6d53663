"""Measurement operators ``y = A(x) + σ_y·n`` for inverse problems, in the net's [-1, 1] pixel units.

Every operator has the forward map, its adjoint and a pseudo-inverse; the ones with a known singular
value decomposition ``A = U·diag(s)·Vᵀ`` expose it in the *spectral* form DDRM (arXiv 2201.11793, §4.3)
and ΠGDM use: ``vt(x)`` and ``v(c)`` map images to and from spectral coefficients of the image's own
shape, ``ut(y)`` maps a measurement to coefficients of that shape (zero where ``s = 0``), ``u(c)`` maps
back, and :attr:`singulars` holds ``s`` (image-shaped, broadcastable over the batch).

- :class:`Kronecker` — ``A = A_c ⊗ A_h ⊗ A_w`` (channels, rows, columns), each factor a small dense
  matrix with its own SVD: denoising (identity), super-resolution by average pooling or bicubic
  downsampling, separable Gaussian blur (reflect boundary), colourisation (channel mean).
- :class:`Mask` — inpainting: ``y = m ⊙ x`` with one mask per image (a box or random pixels).
- :class:`Convolution` — a non-separable kernel (motion blur) through kornia's ``filter2d``; no SVD,
  so its adjoint comes from autograd and its pseudo-inverse from conjugate gradients.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class Operator:
    """A linear measurement map on ``B×C×H×W`` images; subclasses define :meth:`forward` at least."""

    name: str = "operator"
    has_svd: bool = False
    in_shape: tuple[int, int, int]
    """The image shape C×H×W the operator measures."""

    def zeros(self, y: torch.Tensor) -> torch.Tensor:
        """A zero image batch for measurement batch ``y``."""
        return y.new_zeros(y.shape[0], *self.in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀy``, here by a vector-Jacobian product of the (linear) forward map."""
        with torch.enable_grad():
            x = self.zeros(y).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.forward(x), x, y)
        return grad

    def pinv(self, y: torch.Tensor, iters: int = 100, damping: float = 1e-4) -> torch.Tensor:
        """``A⁺y`` as the minimum-norm least-squares solution: conjugate gradients on ``(AᵀA + δ)x = Aᵀy``."""
        b = self.adjoint(y)
        x, r = torch.zeros_like(b), b.clone()
        p, rr = r.clone(), _dot(r, r)
        for _ in range(iters):
            ap = self.adjoint(self.forward(p)) + damping * p
            step = rr / _dot(p, ap).clamp_min(1e-30)
            x, r = x + _bc(step, x) * p, r - _bc(step, x) * ap
            rr_new = _dot(r, r)
            p, rr = r + _bc(rr_new / rr.clamp_min(1e-30), x) * p, rr_new
        return x

    def take(self, index: torch.Tensor) -> "Operator":
        """The operator for images ``index`` of the batch (per-image masks); shared operators return themselves."""
        return self

    def params(self) -> dict[str, np.ndarray]:
        """The operator's seeded parameters (masks, kernels), saved beside every result."""
        return {}


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class SVDOperator(Operator):
    """An operator given by its SVD; forward, adjoint and pseudo-inverse follow from it exactly."""

    has_svd = True
    singulars: torch.Tensor

    def vt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def v(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ut(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def u(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        return self.u(self.singulars.to(x) * self.vt(x))

    def adjoint(self, y):
        return self.v(self.singulars.to(y) * self.ut(y))

    rcond: float = 3e-2
    """Singular values under ``rcond`` times the largest count as zero in :meth:`pinv` (DDRM's code does the same
    for deblurring): a Gaussian blur's smallest ones are ~1e-7, and dividing σ_y = 0.05 noise by them swamps ``A⁺y``."""

    def pinv(self, y, iters=0, damping=0.0):
        s = self.singulars.to(y)
        keep = s > self.rcond * s.max()
        return self.v(torch.where(keep, self.ut(y) / s.clamp_min(1e-12), torch.zeros_like(s)))


def _factor_svd(m: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, s padded to n, Vᵀ)`` of a factor in float64 (identity when ``m`` is ``None``)."""
    if m is None:
        eye = torch.eye(n, dtype=torch.float64)
        return eye, torch.ones(n, dtype=torch.float64), eye
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=True)
    return u, F.pad(s, (0, n - s.numel())), vh


def _along(x: torch.Tensor, m: torch.Tensor, dim: int) -> torch.Tensor:
    """Multiply ``x`` by matrix ``m`` along dimension ``dim`` (1: channels, 2: rows, 3: columns)."""
    return torch.movedim(torch.tensordot(m.to(x), torch.movedim(x, dim, 0), dims=1), 0, dim)


class Kronecker(SVDOperator):
    """``A = A_c ⊗ A_h ⊗ A_w`` on ``C×H×W`` images (``None``: identity along that axis)."""

    def __init__(self, name: str, shape: tuple[int, int, int], factors: tuple[torch.Tensor | None, ...]):
        self.name, self.in_shape, self.factors = name, shape, factors
        svds = [_factor_svd(m, n) for m, n in zip(factors, shape)]
        self._u = [u.float() for u, _, _ in svds]
        self._vh = [vh.float() for _, _, vh in svds]
        sc, sh, sw = (s for _, s, _ in svds)
        self.singulars = (sc[:, None, None] * sh[None, :, None] * sw[None, None, :]).float()
        self.out_shape = tuple(u.shape[0] for u in self._u)

    def forward(self, x):
        for dim, m in enumerate(self.factors, start=1):
            if m is not None:
                x = _along(x, m.float(), dim)
        return x

    def vt(self, x):
        for dim, vh in enumerate(self._vh, start=1):
            x = _along(x, vh, dim)
        return x

    def v(self, c):
        for dim, vh in enumerate(self._vh, start=1):
            c = _along(c, vh.T, dim)
        return c

    def ut(self, y):
        for dim, u in enumerate(self._u, start=1):
            y = _along(y, u.T, dim)
        pad = [p for dim in (3, 2, 1) for p in (0, self.in_shape[dim - 1] - y.shape[dim])]
        return F.pad(y, pad)

    def u(self, c):
        c = c[:, : self.out_shape[0], : self.out_shape[1], : self.out_shape[2]]
        for dim, u in enumerate(self._u, start=1):
            c = _along(c, u, dim)
        return c

    def params(self):
        return {f"factor_{axis}": m.numpy() for axis, m in zip("chw", self.factors) if m is not None}


class Mask(SVDOperator):
    """Inpainting ``y = m ⊙ x``: ``mask`` is ``B×1×H×W`` (1 observed, 0 missing); its SVD is the mask itself."""

    def __init__(self, name: str, mask: torch.Tensor, channels: int):
        self.name, self.mask = name, mask.float()
        self.in_shape = (channels, *mask.shape[2:])

    @property
    def singulars(self):
        return self.mask

    def vt(self, x):
        return x

    def v(self, c):
        return c

    def ut(self, y):
        return y * self.mask.to(y)

    def u(self, c):
        return c * self.mask.to(c)

    def take(self, index):
        return Mask(self.name, self.mask[index], self.in_shape[0])

    def params(self):
        return {"mask": self.mask.to(torch.uint8).numpy()}


class Convolution(Operator):
    """``y = k * x`` per channel with reflect padding (kornia ``filter2d``), ``kernel``: ``kh×kw``."""

    def __init__(self, name: str, kernel: torch.Tensor, shape: tuple[int, int, int]):
        self.name, self.kernel, self.in_shape = name, kernel.float(), shape

    def forward(self, x):
        from kornia.filters import filter2d

        return filter2d(x, self.kernel[None].to(x), border_type="reflect", behaviour="conv")

    def params(self):
        return {"kernel": self.kernel.numpy()}
