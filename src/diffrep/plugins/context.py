"""context: ConPreDiff context prediction (arXiv 2401.02015)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffrep.errors import DiffrepError
from diffrep.plugins.base import Plugin, schedule_factor
from diffrep.plugins.tokens import hidden_shape, mlp, token_dim, as_tokens

@dataclass
class ContextOptions:
    block: int = 0                  # tapped block whose tokens predict their neighbourhood; 0 = the last
    max_stride: int = 2             # rings of neighbours: the 8 at each stride 1…max_stride
    hidden: int = 256               # context decoder width
    weight: float = 0.5
    schedule: str = "constant"


class Context(Plugin):
    """context — ConPreDiff context prediction (Yang et al., arXiv 2401.02015).

    A context decoder (an MLP head on the tokens of block ``block``; removed at sampling) predicts,
    for every token, the clean image patches of its neighbours at strides 1…``max_stride`` (8 per
    stride), and
    is trained with their mean squared error where the neighbour lies inside the image.  No code
    is public; diffrep's choice: the paper decodes a large neighbourhood as a distribution with an
    optimal-transport (Wasserstein) loss; at these small neighbourhoods (8–16 positions) every
    neighbour's position is known, so each is predicted at its position with an L2 loss.
    """

    name = "context"

    def __init__(self, options: ContextOptions):
        super().__init__()
        if options.max_stride < 1:
            raise DiffrepError(f"context: max_stride must be ≥ 1, got {options.max_stride}")
        self.options = options
        self.offsets = [(dy * s, dx * s) for s in range(1, options.max_stride + 1)
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]

    def setup(self, net, ema, process, x0_shape, pixel_shape) -> None:
        tap = f"block{self.options.block}" if self.options.block else net.tap_names[-1]
        self.taps = (tap,)
        shape = hidden_shape(net, x0_shape, tap)
        tokens = shape[1] * shape[2] if len(shape) == 3 else shape[0]
        self.grid = math.isqrt(tokens)
        if self.grid * self.grid != tokens or x0_shape[1] % self.grid:
            raise DiffrepError(f"context: {tap} has {tokens} tokens, not a square grid dividing the image")
        self.patch = x0_shape[1] // self.grid
        self.patch_dim = x0_shape[0] * self.patch**2
        h = self.options.hidden
        self.decoder = mlp([token_dim(shape), h, h, len(self.offsets) * self.patch_dim])

    def loss_terms(self, batch, output, step, ema):
        n, g, reach = batch.x0.shape[0], self.grid, max(max(abs(dy), abs(dx)) for dy, dx in self.offsets)
        pred = self.decoder(as_tokens(output.taps[self.taps[0]]).float()).float()
        pred = pred.view(n, g, g, len(self.offsets), self.patch_dim)
        patches = F.unfold(batch.x0, self.patch, stride=self.patch).view(n, self.patch_dim, g, g)
        padded = F.pad(patches, (reach,) * 4)
        inside = F.pad(torch.ones(1, 1, g, g, device=batch.x0.device), (reach,) * 4)
        error, count = 0.0, 0.0
        for i, (dy, dx) in enumerate(self.offsets):
            window = (slice(None), slice(None), slice(reach + dy, reach + dy + g), slice(reach + dx, reach + dx + g))
            target, valid = padded[window].permute(0, 2, 3, 1), inside[window].permute(0, 2, 3, 1)
            error = error + (valid * (pred[:, :, :, i] - target).pow(2)).sum()
            count = count + valid.sum() * n * self.patch_dim
        return {"context": self.options.weight * schedule_factor(self.options.schedule, step) * error / count}
