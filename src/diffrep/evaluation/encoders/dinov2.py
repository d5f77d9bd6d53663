"""DINOv2 ViT backbones (Oquab et al., arXiv 2304.07193) in plain torch, in the official checkpoint layout.

The modules below carry exactly the parameter names of facebookresearch/dinov2's ``DinoVisionTransformer`` as built
by its torch.hub entry points (``dinov2_vits14`` etc.): ``cls_token``, ``pos_embed``, ``mask_token``,
``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``.
The hub builds every backbone with ``block_chunks=0`` and loads the released ``*_pretrain.pth`` files strictly, so
the official files (ViT-L/14 included) hold flat ``blocks.{i}.…`` keys, never FSDP-chunked ``blocks.{c}.{i}.…``.
Files in transformers' ``Dinov2Model`` layout (``embeddings.*``, ``encoder.layer.{i}.*``, ``layernorm``; the
query/key/value names of transformers 4 and 5 alike) are mapped onto these names; the official positional-embedding
interpolation is kept (transformers' own differs from it). Only the non-register models are covered: no
``register_tokens``, positional-embedding interpolation with the 0.1 offset and without antialiasing (the register
models use offset 0 and antialias).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrep.evaluation.encoders.weights import check_state_dict, read_state_dict, weights_file
from diffrep.errors import DiffrepError

_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"

DINOV2_CONFIGS: dict[str, dict] = {
    "dinov2-s14": {"embed_dim": 384, "depth": 12, "num_heads": 6,
                   "url": f"{_BASE_URL}/dinov2_vits14/dinov2_vits14_pretrain.pth"},
    "dinov2-b14": {"embed_dim": 768, "depth": 12, "num_heads": 12,
                   "url": f"{_BASE_URL}/dinov2_vitb14/dinov2_vitb14_pretrain.pth"},
    "dinov2-l14": {"embed_dim": 1024, "depth": 24, "num_heads": 16,
                   "url": f"{_BASE_URL}/dinov2_vitl14/dinov2_vitl14_pretrain.pth"},
}
"""Registry of the DINOv2 pretrain backbones (arXiv 2304.07193, Table 17): width, depth, heads, weights URL."""

_ARCH_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "pretrain_grid")
_LN_EPS = 1e-6
_MLP_RATIO = 4
# Official interpolate_pos_encoding adds 0.1 to the target grid before turning it into a scale factor (a kludge
# from facebookresearch/dino issue 8, kept there for backward compatibility).
_INTERP_OFFSET = 0.1


class _PatchEmbed(nn.Module):
    """Non-overlapping patch×patch convolution, flattened to ``N×(gh·gw)×D`` tokens in row-major order."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    """Multi-head self-attention with a fused, biased qkv projection laid out as (3, heads, head_dim)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale head_dim**-0.5, as in the official code
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class _LayerScale(nn.Module):
    """Per-channel residual scale ``gamma`` (the hub builds it with init value 1.0)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    """fc1 → exact GELU → fc2, hidden width 4·dim."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, _MLP_RATIO * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(_MLP_RATIO * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = _Attention(dim, num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = _Mlp(dim)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2ViT(nn.Module):
    """DINOv2 vision transformer backbone (arXiv 2304.07193) returning the final-LayerNorm CLS token.

    ``pretrain_grid`` is the patch grid the positional embedding was trained at (37 = 518 px / 14 for the
    official models); other input sizes get a bicubically interpolated embedding. ``mask_token`` is unused at
    inference but kept so that official files load strictly.
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int = 14, pretrain_grid: int = 37):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.patch_size = patch_size
        self.pretrain_grid = pretrain_grid
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 1e-6)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1 + pretrain_grid**2, embed_dim), std=0.02))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def pos_embed_for_grid(self, grid_h: int, grid_w: int) -> Tensor:
        """Positional embedding ``1×(1+grid_h·grid_w)×D`` for a ``grid_h×grid_w`` patch grid.

        Reproduces the official ``interpolate_pos_encoding`` of the non-register models: the stored embedding is
        returned untouched at the pretrain grid; otherwise the patch part is resized in float32 with
        ``F.interpolate(mode="bicubic", align_corners=False, antialias=False)`` using the scale factor
        ``(grid + 0.1) / pretrain_grid`` per axis (not an output size: the scale, offset included, sets the
        sampling positions, while the floor of ``pretrain_grid·scale`` gives the requested grid). The CLS entry
        is never interpolated.
        """
        if grid_h == grid_w == self.pretrain_grid:
            return self.pos_embed
        m = self.pretrain_grid
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        scale = ((grid_h + _INTERP_OFFSET) / m, (grid_w + _INTERP_OFFSET) / m)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"pos-embed interpolation gave {tuple(patch_pos.shape[-2:])}, not {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((pos[:, :1], patch_pos), dim=1)

    def _blocks(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input {height}×{width} is not a multiple of the patch size {self.patch_size}")
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        pos = self.pos_embed_for_grid(height // self.patch_size, width // self.patch_size)
        tokens = tokens + pos.to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        """``x``: float ``N×3×H×W``, resized and ImageNet-normalised, H and W multiples of the patch size.

        Returns the LayerNorm-ed CLS token, ``N×embed_dim`` float32 (also under autocast).
        """
        # LayerNorm acts per token, so normalising only the CLS token equals the official norm(x)[:, 0].
        return self.norm(self._blocks(x)[:, 0]).float()

    def tokens(self, x: Tensor) -> Tensor:
        """The LayerNorm-ed patch tokens (the official ``x_norm_patchtokens``), ``N×(H/14·W/14)×embed_dim``:
        what REPA aligns to."""
        return self.norm(self._blocks(x)[:, 1:]).float()


def _from_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A transformers ``Dinov2Model`` (or ``Dinov2For…``, prefix ``dinov2.``) state dict in the official names."""
    state = {key.removeprefix("dinov2."): value for key, value in state.items() if not key.startswith("classifier.")}
    if "embeddings.cls_token" not in state:
        return state

    def get(*keys: str) -> Tensor:
        for key in keys:
            if key in state:
                return state[key]
        raise DiffrepError(f"a transformers DINOv2 file without {keys[0]}: not a Dinov2Model")

    out = {"cls_token": get("embeddings.cls_token"), "mask_token": get("embeddings.mask_token"),
           "pos_embed": get("embeddings.position_embeddings")}
    for part in ("weight", "bias"):
        out[f"patch_embed.proj.{part}"] = get(f"embeddings.patch_embeddings.projection.{part}")
        out[f"norm.{part}"] = get(f"layernorm.{part}")
    layers = {int(key.split(".")[2]) for key in state if key.startswith("encoder.layer.")}
    for i in sorted(layers):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        attn = src + "attention."
        for part in ("weight", "bias"):
            out[f"{dst}attn.qkv.{part}"] = torch.cat([get(f"{attn}{new}_proj.{part}", f"{attn}attention.{old}.{part}")
                                                     for new, old in (("q", "query"), ("k", "key"), ("v", "value"))])
            out[f"{dst}attn.proj.{part}"] = get(f"{attn}o_proj.{part}", f"{attn}output.dense.{part}")
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}{name}.{part}"] = get(f"{src}{name}.{part}")
        out[dst + "ls1.gamma"] = get(src + "layer_scale1.lambda1")
        out[dst + "ls2.gamma"] = get(src + "layer_scale2.lambda1")
    return out


def _model_kwargs(name: str, config: dict | None) -> dict:
    arch = {**DINOV2_CONFIGS[name], **(config or {})}
    unknown = sorted(set(config or {}) - set(_ARCH_KEYS))
    if unknown:
        raise DiffrepError(f"unknown DINOv2 config keys {unknown}; allowed: {', '.join(_ARCH_KEYS)}")
    return {key: arch[key] for key in _ARCH_KEYS if key in arch}


def load_dinov2(name: str, weights: str | Path | None = None, *, config: dict | None = None) -> DinoV2ViT:
    """Build the DINOv2 backbone ``name`` (arXiv 2304.07193) and load its weights strictly, in eval mode.

    ``weights``: ``None`` downloads the official checkpoint (torch.hub cache); a path reads a ``.safetensors``
    file or a torch pickle (``weights_only``) in the official or the transformers key layout, or a transformers
    folder (its ``model.safetensors``). ``config`` overrides architecture
    entries of the registry (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``pretrain_grid``), for
    tiny test models. Any key or shape mismatch raises ``DiffrepError``; nothing is inferred from the file.
    """
    if name not in DINOV2_CONFIGS:
        raise DiffrepError(f"unknown DINOv2 encoder {name!r}; valid names: {', '.join(DINOV2_CONFIGS)}")
    kwargs = _model_kwargs(name, config)
    with torch.device("meta"):
        model = DinoV2ViT(**kwargs)
    if weights is not None:
        weights = weights_file(weights, ("model.safetensors", "pytorch_model.bin"))
    state, source = read_state_dict(weights, DINOV2_CONFIGS[name]["url"], name)
    state = _from_transformers(state) if isinstance(state, dict) else state
    expected = model.state_dict()
    check_state_dict(state, expected, name, source)
    model.load_state_dict({key: state[key].to(torch.float32) for key in expected}, strict=True, assign=True)
    return model.eval()
