"""REPA: representation alignment with a frozen encoder (arXiv 2410.06940)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.plugins.base import Plugin, schedule_factor
from diffrep.plugins.tokens import hidden_shape, mlp, token_dim, as_tokens, match_token_grid

@dataclass
class RepaOptions:
    encoder: str = "reference"      # any registry encoder with a token grid (dinov2-b14 in the paper)
    encoder_weights: str = ""       # local weights file for the encoder ("" = its default)
    depth: int = 2                  # align the student's block<depth> (SiT-XL/2: 8 of 28)
    weight: float = 0.5             # λ
    proj_dim: int = 512             # projector width (paper: 2048, for D = 1152)
    schedule: str = "constant"
    data: str = ""                  # whose `reference` encoder: a built-in dataset ("": the training data)


class REPA(Plugin):
    """REPA — representation alignment (Yu et al., arXiv 2410.06940).

    The student's tokens after block ``depth`` go through a projector MLP
    (Linear–SiLU–Linear–SiLU–Linear) and are pulled towards the patch tokens of a frozen encoder
    applied to the *clean* image, token by token: loss ``λ·(−mean cos)``, averaged once over
    tokens and batch, as the reference code does (its second ``.mean()`` acts on a scalar).  Grids of different
    size are matched by bilinear interpolation of the encoder's grid.  The encoder runs in
    inference mode, preprocessing the images exactly as its spec declares; it is not a head and is
    not checkpointed.
    """

    name = "repa"

    def __init__(self, options: RepaOptions):
        super().__init__()
        from diffrep.evaluation.encoders import get_encoder

        self.options = options
        self.taps = (f"block{options.depth}",)
        try:
            encoder = get_encoder(options.encoder, options.encoder_weights or None, data=options.data or None)
        except DiffrepError as e:      # the shared refusal (a reference encoder for other data), with this plug-in's fixes
            raise DiffrepError(f"{self.name}: {e}; or pass {self.name}:encoder=dinov2-s14 (an encoder with a token "
                               f"grid), {self.name}:data=mnist5k or {self.name}:encoder_weights=PATH") from None
        if not encoder.has_tokens:
            raise DiffrepError(f"repa: the {options.encoder} encoder has no token grid; use reference or dinov2-*")
        self._frozen = [encoder]          # a plain list: not a sub-module, so not optimised or checkpointed

    def setup(self, net, ema, process, x0_shape, pixel_shape) -> None:
        self.process = process
        student_dim = token_dim(hidden_shape(net, x0_shape, self.taps[0]))
        probe = torch.zeros(1, *pixel_shape, dtype=torch.uint8)
        target_dim = self._frozen[0].tokens(probe).shape[-1]
        self.projector = mlp([student_dim, self.options.proj_dim, self.options.proj_dim, target_dim])

    def alignment(self, projector: nn.Module, hidden: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """Mean token-wise cosine between ``projector(hidden)`` and the encoder's tokens of the clean images
        (the batch's ``uint8`` pixels, whatever space the net works in)."""
        if pixels is None:
            raise DiffrepError(f"{self.name} aligns with an encoder of the clean images: the batch carries no pixels")
        encoder = self._frozen[0].to(pixels.device)
        student = as_tokens(hidden).float()
        target = match_token_grid(encoder.tokens(pixels), student.shape[1])
        return F.cosine_similarity(projector(student).float(), target, dim=-1).mean()

    def loss_terms(self, batch, output, step, ema):
        cos = self.alignment(self.projector, output.taps[self.taps[0]], batch.pixels)
        return {"align": self.options.weight * schedule_factor(self.options.schedule, step) * -cos}
