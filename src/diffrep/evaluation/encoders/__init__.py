"""Frozen feature encoders for metrics: a registry of named encoders plus any ``nn.Module``.

An :class:`Encoder` maps ``uint8 N×C×H×W`` images to float32 features (and logits where
the network has a classifier, for IS).  Its :class:`EncoderSpec` declares everything that
changes the features — input size, resize mode, normalisation, output layer and a
SHA-256 of the weights — and is recorded with every result and keys the feature cache.

Registry: ``inception`` (FID Inception-v3, pool3), ``dinov2-{s,b,l}14`` (CLS token),
``clip`` and ``clip-openai`` (CLIP ViT-L/14 class token, DataComp-XL or OpenAI weights), ``reference``
(diffrep's embedded-data CNN), ``pixels`` (raw pixels, flattened).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from diffrep.evaluation.encoders.resize import RESIZE_MODES, RESIZE_REFERENCES, resize
from diffrep.errors import DiffrepError

# (mean, std) applied to images in [0, 1]
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "[0,1]": ((0.0,), (1.0,)),
    "[-1,1]": ((0.5,), (0.5,)),                 # x/127.5 - 1 on 0-255 values (pytorch-fid)
    "tf": ((128 / 255,), (128 / 255,)),        # (x - 128)/128 on 0-255 values (the TF Inception graph)
    "centred": ((0.5,), (1.0,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder computes; two encoders with equal specs give equal features."""

    name: str
    input_size: int | None        # square input side; None: the images' own size
    resize: str                   # one of RESIZE_MODES
    normalization: str            # key of NORMALIZATIONS
    layer: str                    # which output the features are
    weights_sha256: str           # of the state dict (names, shapes, dtypes, values)
    channels: int | None = 3      # channels the net takes (grey images are repeated); None: any
    reference: str = ""           # the implementation whose preprocessing this reproduces

    def as_dict(self) -> dict:
        return asdict(self)


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict in key order: the same weights hash the same from any file format."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Encoded:
    """Features (``N×D`` float32) and, for classifier encoders, logits."""

    features: torch.Tensor
    logits: torch.Tensor | None = None


class Encoder(nn.Module):
    """uint8 images → :class:`Encoded`: scale to [0, 1], match channels, resize, normalise, run ``net``.

    ``net`` maps normalised float images to features or to ``(features, logits)``.
    """

    def __init__(self, spec: EncoderSpec, net: nn.Module):
        super().__init__()
        if spec.resize not in RESIZE_MODES:
            raise DiffrepError(f"unknown resize mode {spec.resize!r}: choose one of {', '.join(RESIZE_MODES)}")
        if spec.normalization not in NORMALIZATIONS:
            raise DiffrepError(f"unknown normalization {spec.normalization!r}: choose one of {', '.join(NORMALIZATIONS)}")
        self.spec = spec
        self.net = net.eval().requires_grad_(False)
        mean, std = NORMALIZATIONS[spec.normalization]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def _match_channels(self, x: torch.Tensor) -> torch.Tensor:
        want, have = self.spec.channels, x.shape[1]
        if want is None or want == have:
            return x
        if have == 1:
            return x.expand(-1, want, -1, -1)
        raise DiffrepError(f"the {self.spec.name} encoder takes {want}-channel images, got {have} channels")

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DiffrepError(f"encoders take uint8 N×C×H×W images, got {images.dtype} of shape {tuple(images.shape)}")
        x = resize(self._match_channels(images), self.spec.input_size, self.spec.resize)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Encoded:
        out = self.net(self._preprocess(images))
        features, logits = out if isinstance(out, tuple) else (out, None)
        features = features.float().flatten(1)
        return Encoded(features, None if logits is None else logits.float())

    @property
    def has_tokens(self) -> bool:
        return callable(getattr(self.net, "tokens", None))

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """A token grid ``N×L×D`` (L a square number) of ``uint8`` images, for alignment losses (REPA)."""
        if not self.has_tokens:
            raise DiffrepError(f"the {self.spec.name} encoder has no token grid: use reference or dinov2-*")
        return self.net.tokens(self._preprocess(images)).float()


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class _ReferenceFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.cnn = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.cnn.embed(x)
        return features, self.cnn.head(features)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolution's map as tokens, ``N×(H/4·W/4)×128``."""
        return self.cnn.body(x).flatten(2).transpose(1, 2)


def _spec(name: str, size: int | None, mode: str, normalization: str, layer: str, net: nn.Module,
          channels: int | None = 3) -> EncoderSpec:
    return EncoderSpec(name, size, mode, normalization, layer, state_dict_sha256(net), channels,
                       RESIZE_REFERENCES[mode])


def inception_encoder(weights: str | None = None, resize_mode: str | None = None, layer: str | None = None,
                      logits_bias: bool = False) -> Encoder:
    """FID Inception-v3: ``clean`` by default; every mode scales inputs as (x − 128)/128 like the TF graph, but
    ``bilinear``, which is pytorch-fid's pair (x/127.5 − 1). IS logits omit the classifier bias, as the original IS
    code and torch-fidelity do (``logits_bias=True`` only to reproduce numbers of tools that keep it)."""
    from diffrep.evaluation.encoders.inception import load_fid_inception

    _no_layers("inception", layer)
    net = load_fid_inception(weights, logits_bias=logits_bias)
    mode = resize_mode or "clean"
    logits = "logits with bias" if logits_bias else "logits without bias"
    return Encoder(_spec("inception", 299, mode, "[-1,1]" if mode == "bilinear" else "tf", f"pool3; {logits}", net),
                   net)


def _dinov2(name: str) -> Callable[..., Encoder]:
    def build(weights: str | None, resize_mode: str | None, layer: str | None = None) -> Encoder:
        from diffrep.evaluation.encoders.dinov2 import load_dinov2

        _no_layers(name, layer)
        net = load_dinov2(name, weights)
        return Encoder(_spec(name, 224, resize_mode or "pil-bicubic", "imagenet", "cls", net), net)
    return build


def _clip(name: str) -> Callable[..., Encoder]:
    def build(weights: str | None, resize_mode: str | None, layer: str | None = None) -> Encoder:
        from diffrep.evaluation.encoders.clip import load_clip

        net = load_clip(name, weights, layer or "cls")
        return Encoder(_spec(name, 224, resize_mode or "pil-bicubic", "clip", net.layer, net), net)
    return build


def _no_layers(name: str, layer: str | None) -> None:
    if layer is not None:
        raise DiffrepError(f"the {name} encoder has one layer: drop ':{layer}' (only clip and clip-openai take "
                           "':cls' or ':projected')")


def reference_dataset(data: str | None) -> str:
    """The built-in dataset whose reference encoder judges images of ``data`` (a spec such as ``digits:test``;
    ``None``: mnist5k); other data have no reference encoder: a one-line error naming those that fit."""
    from diffrep.data import BUILTIN

    if data is None:
        return "mnist5k"
    name = data.partition(":")[0]
    if name not in BUILTIN:
        raise DiffrepError(f"the reference encoder is trained on a built-in dataset ({', '.join(BUILTIN)}), not on "
                           f"{data}: use encoders that fit any images (inception, dinov2-s14, clip, pixels) or "
                           "--encoder-weights reference=PATH")
    return name


def _reference(weights: str | None, resize_mode: str | None, layer: str | None = None,
               data: str | None = None) -> Encoder:
    from diffrep.reference import load_reference

    _no_layers("reference", layer)
    net = _ReferenceFeatures(load_reference("mnist5k" if weights else reference_dataset(data), weights))
    return Encoder(_spec("reference", None, resize_mode or "none", "centred", "fc128", net, channels=None), net)


def _pixels(weights: str | None, resize_mode: str | None, layer: str | None = None) -> Encoder:
    if weights:
        raise DiffrepError("the pixels encoder has no weights: drop --encoder-weights")
    _no_layers("pixels", layer)
    mode = resize_mode or "none"
    return Encoder(EncoderSpec("pixels", None, mode, "[0,1]", "flat", "none", None, RESIZE_REFERENCES[mode]),
                   _Flatten())


ENCODERS: dict[str, Callable[..., Encoder]] = {
    "inception": inception_encoder,
    "dinov2-s14": _dinov2("dinov2-s14"),
    "dinov2-b14": _dinov2("dinov2-b14"),
    "dinov2-l14": _dinov2("dinov2-l14"),
    "clip": _clip("clip"),
    "clip-openai": _clip("clip-openai"),
    "reference": _reference,
    "pixels": _pixels,
}


def encoder_base(name: str) -> str:
    """The registered name of ``NAME`` or ``NAME:LAYER`` (``clip:projected`` → ``clip``): what its weights go by."""
    return name.partition(":")[0]


def get_encoder(name: str, weights: str | Path | None = None, resize_mode: str | None = None,
                data: str | None = None) -> Encoder:
    """A registered encoder, ``NAME`` or ``NAME:LAYER`` (``clip:projected``); ``weights`` is a local file (default:
    the official download), ``resize_mode`` overrides; ``data`` (a dataset spec) picks the ``reference`` encoder
    of that built-in dataset."""
    base, layer = encoder_base(name), name.partition(":")[2]
    if base not in ENCODERS:
        raise DiffrepError(f"unknown encoder {name!r}: choose from {', '.join(ENCODERS)}")
    if resize_mode is not None and resize_mode not in RESIZE_MODES:
        raise DiffrepError(f"unknown resize mode {resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    weights = None if weights is None else str(weights)
    if base == "reference":
        return _reference(weights, resize_mode, layer or None, data)
    return ENCODERS[base](weights, resize_mode, layer or None)


def encoder_from_module(module: nn.Module, name: str, *, input_size: int | None = None, resize_mode: str = "bicubic",
                        normalization: str = "imagenet", layer: str = "output", channels: int | None = 3) -> Encoder:
    """Wrap any ``nn.Module`` (normalised float images → features or ``(features, logits)``) as an encoder."""
    if resize_mode not in RESIZE_MODES:
        raise DiffrepError(f"unknown resize mode {resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    return Encoder(_spec(name, input_size, resize_mode, normalization, layer, module, channels), module)

