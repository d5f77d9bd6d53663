"""Helpers plug-ins share: hidden states as tokens, grid matching, a dry forward for shapes, MLP heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.errors import DiffrepError

def as_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """A tapped hidden state as tokens ``N×L×D``: DiT tokens as they are, a U-Net map ``N×C×H×W`` as ``N×HW×C``."""
    return hidden.flatten(2).transpose(1, 2) if hidden.ndim == 4 else hidden


def match_token_grid(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a square token grid ``N×L×D`` to ``length`` tokens (bilinear on the grid)."""
    if tokens.shape[1] == length:
        return tokens
    side, target = math.isqrt(tokens.shape[1]), math.isqrt(length)
    if side * side != tokens.shape[1] or target * target != length:
        raise DiffrepError(f"cannot match a {tokens.shape[1]}-token grid to {length} tokens: both must be square "
                           "grids (choose another block or encoder)")
    grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    grid = F.interpolate(grid, size=(target, target), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def hidden_shape(net: nn.Module, image_shape: tuple[int, int, int], tap: str) -> torch.Size:
    """Shape of one image's tapped hidden state (a dry forward of one blank image)."""
    if tap not in net.tap_names:
        raise DiffrepError(f"unknown block {tap!r}: this net has {', '.join(net.tap_names)}")
    device = next(net.parameters()).device
    cond = torch.zeros(1, dtype=torch.long, device=device) if getattr(net, "num_classes", 0) else None
    with torch.no_grad():
        _, hidden = net(torch.zeros(1, *image_shape, device=device), torch.zeros(1, device=device), cond, taps=(tap,))
    return hidden[tap].shape[1:]


def token_dim(shape: torch.Size) -> int:
    return shape[0] if len(shape) == 3 else shape[-1]


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)
