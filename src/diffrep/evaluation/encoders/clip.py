"""CLIP ViT-L/14 image tower (Radford et al., arXiv 2103.00020) in plain torch: no open_clip, no torchvision.

Features as dgm-eval computes them (Stein et al., arXiv 2306.04675; its ``models/clip.py``): the class token after
``ln_post``, **before** the projection (1024-d for ViT-L/14). ``layer="projected"`` is the projected image embedding
(768-d), what open_clip's ``encode_image`` returns.

Two registered weights, each with the activation it was trained with:

- ``clip``: open_clip ``ViT-L-14`` / ``datacomp_xl_s13b_b90k`` (Gadre et al., arXiv 2304.14108), exact GELU —
  dgm-eval's default;
- ``clip-openai``: OpenAI's ViT-L/14, QuickGELU ``x·σ(1.702x)`` (open_clip ≥ 2.29 builds plain GELU for it unless
  asked for ``-quickgelu``; features then drift by about 2%).

Files: open_clip checkpoints (``visual.*`` keys, the names OpenAI's checkpoints use too, optionally under
``state_dict``/``module.``), OpenAI's TorchScript ``ViT-L-14.pt``, a bare visual state dict, and transformers'
``CLIPVisionModel``/``CLIPVisionModelWithProjection``/``CLIPModel`` files (q/k/v mapped onto the fused projection;
the projection is optional there, and needed only for ``projected``). A transformers ``config.json`` beside the
file (or in the folder given) is checked against the encoder's activation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrep.evaluation.encoders.weights import check_state_dict, read_state_dict, weights_file
from diffrep.errors import DiffrepError

_HF = "https://huggingface.co"
CLIP_CONFIGS: dict[str, dict] = {
    "clip": {"quick_gelu": False,
             "url": f"{_HF}/laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K/resolve/main/open_clip_pytorch_model.bin"},
    "clip-openai": {"quick_gelu": True,
                    "url": f"{_HF}/timm/vit_large_patch14_clip_224.openai/resolve/main/open_clip_pytorch_model.bin"},
}
"""ViT-L/14 weights: activation and download address (open_clip's hub entries for those tags)."""

VIT_L14 = {"width": 1024, "layers": 24, "heads": 16, "patch_size": 14, "image_size": 224, "output_dim": 768}
LAYERS = ("cls", "projected")
_ARCH_KEYS = tuple(VIT_L14)


def check_layer(layer: str, name: str = "clip") -> None:
    if layer not in LAYERS:
        raise DiffrepError(f"unknown CLIP layer {layer!r}: use {name}:cls or {name}:projected")


class QuickGELU(nn.Module):
    """``x·σ(1.702x)``, the activation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names (fused ``in_proj``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, quick_gelu: bool):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, quick_gelu)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualBlock(dim, heads, quick_gelu) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class ClipViT(nn.Module):
    """CLIP's vision transformer in open_clip's ``visual`` layout; ``forward`` gives the ``layer`` features.

    ``output_dim=None`` builds no projection (a transformers ``CLIPVisionModel`` file has none).
    """

    def __init__(self, width: int, layers: int, heads: int, patch_size: int, image_size: int,
                 output_dim: int | None, quick_gelu: bool, layer: str = "cls"):
        super().__init__()
        check_layer(layer)
        if layer == "projected" and output_dim is None:
            raise DiffrepError("these CLIP weights have no projection (a transformers CLIPVisionModel file): use the "
                               "cls layer, or a CLIPModel / CLIPVisionModelWithProjection / open_clip file")
        self.layer = layer
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((image_size // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads, quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = None if output_dim is None else nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: float ``N×3×S×S`` (S the image size), CLIP-normalised; returns float32 ``N×D`` features."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise DiffrepError(f"CLIP takes {self.image_size}×{self.image_size} images, got {tuple(x.shape[-2:])}")
        tokens = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.positional_embedding.to(tokens.dtype)
        pooled = self.ln_post(self.transformer(self.ln_pre(tokens))[:, 0])
        return (pooled @ self.proj if self.layer == "projected" else pooled).float()


def visual_state_dict(state: dict) -> dict[str, Tensor]:
    """The visual tower's tensors, in open_clip's names, of an open_clip, OpenAI or transformers state dict."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if any(key.startswith("vision_model.") for key in state):
        return _from_transformers(state)
    if any(key.startswith("visual.") for key in state):
        return {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
    return state


def _from_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    def get(key: str) -> Tensor:
        if key not in state:
            raise DiffrepError(f"a transformers CLIP file without {key}: not a CLIP vision model")
        return state[key]

    p = "vision_model."
    out = {"class_embedding": get(p + "embeddings.class_embedding"),
           "conv1.weight": get(p + "embeddings.patch_embedding.weight"),
           "positional_embedding": get(p + "embeddings.position_embedding.weight"),
           "ln_post.weight": get(p + "post_layernorm.weight"), "ln_post.bias": get(p + "post_layernorm.bias")}
    for part in ("weight", "bias"):
        out[f"ln_pre.{part}"] = get(f"{p}pre_layrnorm.{part}")   # sic: transformers' name
    layers = {int(key.split(".")[3]) for key in state if key.startswith(p + "encoder.layers.")}
    for i in sorted(layers):
        src, dst = f"{p}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat([get(f"{src}self_attn.{x}_proj.{part}") for x in "qkv"])
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{a}.{part}"] = get(f"{src}{b}.{part}")
    if "visual_projection.weight" in state:
        out["proj"] = state["visual_projection.weight"].t()
    return out


def _check_config(path: Path, name: str) -> None:
    """A transformers ``config.json`` beside the weights must name the activation ``name`` is built with."""
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return
    act = config.get("vision_config", config).get("hidden_act")
    want = "quick_gelu" if CLIP_CONFIGS[name]["quick_gelu"] else "gelu"
    if act in ("quick_gelu", "gelu") and act != want:
        other = "clip-openai" if act == "quick_gelu" else "clip"
        raise DiffrepError(f"{config_file} says these CLIP weights use {act}, but the {name} encoder is built with "
                           f"{want}: use the {other} encoder")


def load_clip(name: str = "clip", weights: str | Path | None = None, layer: str = "cls", *,
              config: dict | None = None) -> ClipViT:
    """CLIP ViT-L/14 ``name`` (``clip`` | ``clip-openai``) with ``weights`` (``None``: the official download; a
    file or a transformers folder, in any layout of the module docstring), eval mode, features of ``layer``.
    ``config`` overrides architecture entries (``width``, ``layers``, ``heads``, …) for small test models."""
    if name not in CLIP_CONFIGS:
        raise DiffrepError(f"unknown CLIP encoder {name!r}; valid names: {', '.join(CLIP_CONFIGS)}")
    check_layer(layer, name)         # before any download
    unknown = sorted(set(config or {}) - set(_ARCH_KEYS))
    if unknown:
        raise DiffrepError(f"unknown CLIP config keys {unknown}; allowed: {', '.join(_ARCH_KEYS)}")
    if weights is not None:
        _check_config(Path(weights), name)
        weights = weights_file(weights, ("open_clip_model.safetensors", "model.safetensors",
                                         "open_clip_pytorch_model.bin", "pytorch_model.bin"))
    state, source = read_state_dict(weights, CLIP_CONFIGS[name]["url"], name)
    visual = visual_state_dict(state) if isinstance(state, dict) else state
    arch = {**VIT_L14, **(config or {})}
    if isinstance(visual, dict) and "proj" not in visual:
        arch["output_dim"] = None
    with torch.device("meta"):
        model = ClipViT(**arch, quick_gelu=CLIP_CONFIGS[name]["quick_gelu"], layer=layer)
    expected = model.state_dict()
    check_state_dict(visual, expected, name, source)
    model.load_state_dict({key: visual[key].to(torch.float32) for key in expected}, strict=True, assign=True)
    return model.eval()
