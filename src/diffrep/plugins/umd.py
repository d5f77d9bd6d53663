"""UMD: unified masked diffusion for DiTs (arXiv 2406.17688)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.nets.capabilities import require
from diffrep.plugins.base import Plugin, schedule_factor

@dataclass
class UmdOptions:
    clean_fraction: float = 0.5     # share of steps on the clean (MAE) branch
    clean_mask: float = 0.75        # mask ratio of the clean branch
    noisy_mask: float = 0.375       # mask ratio of the noised branch
    decoder_blocks: int = 2         # the last blocks see every token, with a mask token where masked
    weight: float = 1.0             # x0 loss on masked patches
    schedule: str = "constant"
    unmask_after: int = 0           # from this step on, plain training without masks; 0 = never


class UMD(Plugin):
    """UMD — unified masked diffusion (Hansen-Estruch et al., arXiv 2406.17688), for DiTs.

    A step's batch takes one of two branches: with probability ``clean_fraction`` the clean image
    (``t = t_min``) with ``clean_mask`` of its patches masked and only an MAE-style x0 loss on
    the masked patches; otherwise the noised image with ``noisy_mask`` masked, the usual
    denoising loss on the visible patches and the x0 loss on the masked ones.  Masked tokens are
    dropped before the first block (forward pre-hooks on the student only) and come back as a
    learned mask token (+ position) before the last ``decoder_blocks`` blocks; at masked patches
    the net's raw output is read as x0.  Sampling uses every token and never sees the mask
    token, which is a head (not exported).  The mask stays set until the next micro-batch, so
    activation checkpointing's recomputation masks alike.  diffrep's choice: the paper splits every batch
    between the branches; here the whole batch of a step takes one branch (same mixture in
    expectation), so there is still one forward per micro-batch, and the branch does not depend
    on how the batch is split over processes and micro-batches.  Taps of the encoder blocks hold the visible
    tokens only: combine with plug-ins that tap the decoder blocks.  ``unmask_after`` ends the
    masking at a step, for a final phase of plain training (MaskDiT's unmasked fine-tuning,
    arXiv 2306.09305, which closes the gap between masked training and unmasked sampling).
    """

    name = "umd"

    def __init__(self, options: UmdOptions):
        super().__init__()
        for key in ("clean_fraction", "clean_mask", "noisy_mask"):
            if not 0 <= getattr(options, key) < 1:
                raise DiffrepError(f"umd: {key} must be in [0, 1), got {getattr(options, key)}")
        self.options = options
        self._keep: torch.Tensor | None = None
        self._masked: torch.Tensor | None = None

    def setup(self, net, ema, process, x0_shape, pixel_shape) -> None:
        require(net, "token_grid", "umd (it masks patch tokens)", "it needs a DiT (--model DiT-…)")
        blocks = net.blocks
        if not 1 <= self.options.decoder_blocks < len(blocks):
            raise DiffrepError(f"umd: decoder_blocks must be in 1…{len(blocks) - 1}, got {self.options.decoder_blocks}")
        self.process, self.grid, self.patch = process, net.grid, net.patch_size
        self._net = [net]           # a plain list: the net is not a sub-module of the plug-in
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, net.hidden_size))
        self.encoder_blocks = len(blocks) - self.options.decoder_blocks
        blocks[0].register_forward_pre_hook(self._drop_masked)
        blocks[self.encoder_blocks].register_forward_pre_hook(self._restore_masked)

    def check_taps(self, taps: set[str]) -> None:
        visible_only = sorted(taps & {f"block{k}" for k in range(1, self.encoder_blocks + 1)})
        if visible_only:
            k = self.encoder_blocks
            raise DiffrepError(f"umd: {', '.join(visible_only)}, tapped by another plug-in, holds only the unmasked "
                               f"tokens (umd's encoder is blocks 1…{k}): tap block{k + 1} or later "
                               f"(e.g. repa:depth={k + 1}), or raise umd:decoder_blocks")

    def transform_batch(self, batch, step, draws):
        if 0 < self.options.unmask_after <= step:
            self._keep = self._masked = None
            return batch
        n, tokens = batch.x0.shape[0], self.grid * self.grid
        clean = draws.shared_uniform() < self.options.clean_fraction
        ratio = self.options.clean_mask if clean else self.options.noisy_mask
        keep = draws.uniform(tokens).argsort(1)[:, : tokens - round(ratio * tokens)]
        keep = keep.sort(1).values.to(batch.x0.device)
        masked = torch.ones(n, tokens, device=batch.x0.device).scatter(1, keep, 0.0).view(n, 1, self.grid, self.grid)
        self._keep = keep
        self._masked = masked.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        if clean:
            return batch.replace(t=torch.full_like(batch.t, self.process.t_min), loss_weight=torch.zeros_like(self._masked))
        return batch.replace(loss_weight=1.0 - self._masked)

    def _drop_masked(self, block: nn.Module, args):
        if self._keep is None or not block.training:
            return None
        h, c = args
        return h.gather(1, self._keep[..., None].expand(-1, -1, h.shape[-1])), c

    def _restore_masked(self, block: nn.Module, args):
        if self._keep is None or not block.training:
            return None
        h, c = args
        full = (self.mask_token + self._net[0].pos_embed).to(h.dtype).expand(h.shape[0], -1, -1)
        return full.scatter(1, self._keep[..., None].expand(-1, -1, h.shape[-1]), h), c

    def loss_terms(self, batch, output, step, ema):
        masked = self._masked
        if masked is None:
            return {}
        error = ((output.raw - batch.x0).pow(2) * masked).sum() / (masked.sum() * batch.x0.shape[1]).clamp_min(1)
        return {"masked_x0": self.options.weight * schedule_factor(self.options.schedule, step) * error}
