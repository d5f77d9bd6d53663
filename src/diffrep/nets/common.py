"""Pieces shared by the backbones: time and label embeddings, tap validation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffrep.errors import DiffrepError

NULL_LABEL = -1
"""The label that means "no class" (classifier-free guidance's unconditional branch)."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, its kernel chosen by need.  Where gradients flow on the CPU (training,
    DPS-style guidance), the math backend: it trains the short token sequences of these nets 15–25% faster than
    the CPU flash kernel, whose backward dominated a DiT-S/4 step.  Under ``torch.use_deterministic_algorithms``
    also the math backend (the fused CUDA kernels' backward is not deterministic).  Otherwise (sampling,
    features, evaluation) the fastest kernel PyTorch picks: on the CPU the flash forward, which spends 35–50%
    less time in attention than the math one."""
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if torch.are_deterministic_algorithms_enabled() or (grads and q.device.type == "cpu"):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sin/cos features of a scalar per sample (DDPM / DiT time embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of the net's time input followed by a 2-layer MLP (DiT).

    The net's time input is the process's ``net_time(t)``, scaled to roughly [0, 1000].
    """

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ScaleEmbedding(nn.Module):
    """The guidance-scale input of a guidance-distilled student (Meng et al., arXiv 2210.03142, §3; the w-embedding of
    diffusers' LCM script): sinusoidal features of ``1000·(s − 1)`` through a 2-layer MLP, added to the time
    embedding.  The last layer starts at zero, so the student starts as its teacher's conditional model."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.embed = TimestepEmbedding(dim, freq_dim)
        nn.init.zeros_(self.embed.mlp[-1].weight)
        nn.init.zeros_(self.embed.mlp[-1].bias)

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        return self.embed(1000.0 * (scale - 1.0))


def add_guidance_scale(emb: torch.Tensor, embedder: ScaleEmbedding | None, scale: torch.Tensor | None) -> torch.Tensor:
    """``emb`` plus the embedding of the guidance ``scale`` (per sample; ``None``: 1, the plain conditional model) for
    a net with a :class:`ScaleEmbedding`; a one-line error where a net without one is given a scale."""
    if embedder is None:
        if scale is not None:
            raise DiffrepError("this net takes no guidance scale (it is not a guidance-distilled student of "
                               "`diffrep distill --kind guidance`)")
        return emb
    scale = torch.ones(emb.shape[0], device=emb.device) if scale is None else scale.to(emb.device).expand(emb.shape[0])
    return emb + embedder(scale).to(emb.dtype)


class LabelEmbedding(nn.Module):
    """Class embedding with one extra row for :data:`NULL_LABEL` (``cond=None`` means all null)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), NULL_LABEL, dtype=torch.long, device=self.table.weight.device)
        return self.table(torch.where(y < 0, self.num_classes, y))


class EmbeddingCondition(nn.Module):
    """Conditioning on an image embedding instead of a class (representation-conditioned generation, as in Graikos et
    al., "Learned representation-guided diffusion models for large-image generation", CVPR 2024): a 2-layer MLP of the
    L2-normalised embedding, added like a class embedding.  A zero embedding is the null condition (what label
    dropout and classifier-free guidance's unconditional branch pass): it gets a learned vector of its own."""

    def __init__(self, embedding_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(embedding_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, e: torch.Tensor | None, batch: int) -> torch.Tensor:
        if e is None:
            return self.null.expand(batch, -1)
        if e.ndim != 2 or e.shape[1] != self.mlp[0].in_features:
            raise DiffrepError(f"this net is conditioned on {self.mlp[0].in_features}-dimensional embeddings, got a "
                               f"condition of shape {tuple(e.shape)}")
        null = (e == 0).all(1, keepdim=True)
        return torch.where(null, self.null.to(e.dtype), self.mlp(e.to(self.mlp[0].weight.dtype)).to(e.dtype))


def null_condition(cond: torch.Tensor) -> torch.Tensor:
    """The unconditional counterpart of a batch's condition: :data:`NULL_LABEL` for class labels, the zero embedding
    for an embedding-conditioned net (:class:`EmbeddingCondition`)."""
    return torch.zeros_like(cond) if cond.is_floating_point() else torch.full_like(cond, NULL_LABEL)


class SelfCondition(nn.Module):
    """DDAE++ self-conditioning (Xiang et al., arXiv 2505.10999): the mean of a middle layer's features,
    through LayerNorm–Linear–SiLU–Linear, is added to the conditioning vector of every later layer.

    The paper's training code is not public; diffrep's choices: mean pooling over tokens (or pixels),
    the source is the middle block, and the last linear starts at zero, so the net starts as the
    plain net and learns how much of its own semantics to route to the decoding layers.
    """

    def __init__(self, feature_dim: int, cond_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, cond_dim), nn.SiLU(),
                                 nn.Linear(cond_dim, cond_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``features``: ``B×L×D`` tokens or a ``B×D×H×W`` map; ``cond``: ``B×cond_dim``."""
        pooled = features.mean(1) if features.ndim == 3 else features.mean((2, 3))
        return cond + self.mlp(pooled.to(cond.dtype)).to(cond.dtype)


def join_image(x: torch.Tensor, image: torch.Tensor | None, image_channels: int) -> torch.Tensor:
    """``x`` with the conditioning ``image`` concatenated along channels (DiffuseVAE's form 1, arXiv 2201.00308), for a
    net built with ``image_channels``; a one-line error where the image is missing or not expected."""
    if image_channels == 0:
        if image is not None:
            raise DiffrepError("this net takes no conditioning image (it was not trained with --diffusevae)")
        return x
    if image is None:
        raise DiffrepError("this net is conditioned on an image (a --diffusevae run): pass image=, the VAE's "
                           "reconstruction")
    if image.shape[0] != x.shape[0] or image.shape[1] != image_channels or image.shape[2:] != x.shape[2:]:
        raise DiffrepError(f"the conditioning image is {tuple(image.shape)} but this net takes {image_channels} "
                           f"channels at {tuple(x.shape[2:])} for a batch of {x.shape[0]}")
    return torch.cat([x, image.to(x.dtype)], dim=1)


def check_taps(taps: tuple[str, ...], valid: tuple[str, ...]) -> None:
    unknown = [t for t in taps if t not in valid]
    if unknown:
        raise DiffrepError(f"unknown tap(s) {unknown}: this net has {valid[0]} … {valid[-1]}")
