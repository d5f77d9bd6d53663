"""A small U-Net in the ADM / DDPM++ style (Dhariwal & Nichol, arXiv 2105.05233; Song et al., arXiv 2011.13456).

Residual blocks with GroupNorm, SiLU and a scale-shift ("adaGN") time/class
modulation, skip connections concatenated on the way up, optional self-attention
(``F.scaled_dot_product_attention``) at chosen resolutions, and a zero-initialised
output convolution.

Taps: ``"blockK"`` is the feature map ``B×C×H×W`` after the K-th block in forward
order: the encoder's residual blocks, then the middle block (res-attn-res), then
the decoder's residual blocks.  ``net.tap_names`` lists them; the middle block is
``net.middle_tap``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffrep.errors import DiffrepError
from diffrep.nets.common import (EmbeddingCondition, LabelEmbedding, ScaleEmbedding, SelfCondition, TimestepEmbedding,
                                 add_guidance_scale, attention, check_taps, join_image)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, max(1, channels // 4)), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Block(nn.Module):
    """One residual block, followed by self-attention where asked."""

    def __init__(self, cin: int, cout: int, emb_dim: int, attention: bool, heads: int, dropout: float):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, dropout)
        self.attn = SelfAttention(cout, heads) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class UNet(nn.Module):
    """``forward(x, t, cond, taps=()) -> (out, {tap: hidden})``."""

    shard_units = (Block,)          # what ``--fsdp`` shards (and gathers) one at a time

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 1,
        channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (),
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int = 10,
        grad_checkpoint: bool = False,
        self_condition: int = 0,
        image_channels: int = 0,
        guidance_embedding: bool = False,
        embedding_dim: int = 0,
    ):
        """``self_condition``: 0 = off; −1 (or the middle block's index) = the mean of the middle
        block's map conditions the decoder (:class:`SelfCondition`).  ``image_channels``: channels of a conditioning
        image concatenated to the input (DiffuseVAE; ``forward(..., image=)``).  ``guidance_embedding``: a
        guidance-distilled student's scale input (:class:`ScaleEmbedding`; ``forward(..., guidance_scale=)``).
        ``embedding_dim``: condition on embeddings of this size instead of classes (:class:`EmbeddingCondition`)."""
        super().__init__()
        self.in_channels, self.num_classes, self.image_channels = in_channels, num_classes, image_channels
        self.grad_checkpoint = grad_checkpoint
        emb_dim = 4 * channels
        self.t_embedder = TimestepEmbedding(emb_dim, freq_dim=channels)
        self.y_embedder = LabelEmbedding(num_classes, emb_dim) if num_classes > 0 else None
        if embedding_dim:
            self.y_embedder, self.num_classes = EmbeddingCondition(embedding_dim, emb_dim), 0
        self.w_embedder = ScaleEmbedding(emb_dim, freq_dim=channels) if guidance_embedding else None
        self.conv_in = nn.Conv2d(in_channels + image_channels, channels, 3, padding=1)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch, res = [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(Block(ch, channels * mult, emb_dim, res in attn_resolutions, num_heads, dropout))
                ch = channels * mult
                skips.append(ch)
            last = level == len(channel_mult) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([Block(ch, ch, emb_dim, True, num_heads, dropout), Block(ch, ch, emb_dim, False, num_heads, dropout)])
        ch_mid = ch

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(Block(ch + skips.pop(), channels * mult, emb_dim, res in attn_resolutions, num_heads, dropout))
                ch = channels * mult
            self.upsample.append(nn.Identity() if level == 0 else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
            res *= 2
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.blocks_per_level = num_res_blocks
        n_down, n_up = len(self.down), len(self.up)
        self.tap_names = tuple(f"block{i}" for i in range(1, n_down + n_up + 2))
        self.middle_tap = f"block{n_down + 1}"
        if self_condition not in (0, -1, n_down + 1):
            raise DiffrepError(f"the U-Net self-conditions from its middle block only: use -1 (or {n_down + 1}), "
                               f"not {self_condition}")
        self.self_cond = SelfCondition(ch_mid, emb_dim) if self_condition else None
        self.capabilities = frozenset(({"label_embedding"} if self.num_classes > 0 else set())
                                      | ({"self_condition"} if self.self_cond is not None else set()))

    def _block(self, block: Block, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpoint and self.training:
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, taps: tuple[str, ...] = (),
                taps_only: bool = False, image: torch.Tensor | None = None, guidance_scale: torch.Tensor | None = None):
        """``(out, {tap: hidden})``; with ``taps_only``, ``(None, {tap: hidden})`` right after the deepest tap."""
        check_taps(taps, self.tap_names)
        x = join_image(x, image, self.image_channels)
        emb = self.t_embedder(t)
        if self.y_embedder is not None:
            emb = emb + self.y_embedder(cond, batch=x.shape[0])
        emb = add_guidance_scale(emb, self.w_embedder, guidance_scale)
        hidden, k = {}, 0

        def tap(h: torch.Tensor) -> bool:
            """Record ``h`` if tapped; whether the forward can stop here (``taps_only``, every tap recorded)."""
            nonlocal k
            k += 1
            if f"block{k}" in taps:
                hidden[f"block{k}"] = h
            return taps_only and len(hidden) == len(set(taps))

        h = self.conv_in(x)
        skips = [h]
        blocks = iter(self.down)
        for down in self.downsample:
            for _ in range(self.blocks_per_level):
                h = self._block(next(blocks), h, emb)
                if tap(h):
                    return None, hidden
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self._block(self.mid[1], self._block(self.mid[0], h, emb), emb)
        if tap(h):
            return None, hidden
        if self.self_cond is not None:
            emb = self.self_cond(h, emb)
        blocks = iter(self.up)
        for up in self.upsample:
            for _ in range(self.blocks_per_level + 1):
                h = self._block(next(blocks), torch.cat([h, skips.pop()], dim=1), emb)
                if tap(h):
                    return None, hidden
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h))), hidden


# diffrep's U-Net sizes for small images (no published names at this scale).
UNET_SIZES = {
    "UNet-XS": {"channels": 16, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": ()},
    "UNet-S": {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": ()},
    "UNet-M": {"channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 2, "attn_resolutions": (8,)},
    "UNet-B": {"channels": 128, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16,)},
}
