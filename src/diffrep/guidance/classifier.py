"""Classifier guidance (Dhariwal & Nichol, arXiv 2105.05233): steer sampling by the gradient of a noise-aware
classifier, ``∇_{x_t} log p(y | x_t, t)``, scaled by ``s``.

With ``x_t = α(t)·x0 + σ(t)·ε`` the guided score is ``∇ log p(x_t) + s·∇ log p(y | x_t)``; as a denoiser wrapper that
is ``ε ← ε − s·σ·g`` and ``x0 ← x0 + s·(σ²/α)·g``, so every sampler and process takes it unchanged.  The classifier
(:class:`NoisyClassifier`, ``diffrep train-classifier RUN``) reads ``x_t`` exactly as the run's net does (the process's
input scaling and net time), so it is trained for one run's process and space.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.nets.common import TimestepEmbedding
from diffrep.nets.unet import ResBlock, group_norm
from diffrep.processes import Prediction


class NoisyClassifier(nn.Module):
    """ADM's classifier shape at small scale: the encoder half of a U-Net (time-modulated residual blocks, three
    resolutions), mean-pooled, then a linear head.  ``forward(x_t_scaled, net_time) -> logits``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: int = 32):
        super().__init__()
        self.config = {"kind": "noisy", "in_channels": in_channels, "num_classes": num_classes, "channels": channels}
        emb = 4 * channels
        self.t_embedder = TimestepEmbedding(emb, freq_dim=channels)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = (channels, 2 * channels, 2 * channels)
        self.blocks = nn.ModuleList(ResBlock(cin, cout, emb) for cin, cout in zip((channels,) + widths[:-1], widths))
        self.down = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        self.norm = group_norm(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.t_embedder(t)
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.down):
                h = self.down[i](h)
        return self.head(F.silu(self.norm(h)).mean((2, 3)))


class CleanClassifier(nn.Module):
    """An off-the-shelf kind of classifier of clean ``x0`` for EluCD: strided ReLU convolutions with GroupNorm (24, 48,
    96 channels), mean-pooled, a ReLU MLP head.  Another architecture than the reference CNN that judges (BatchNorm,
    max-pooling, 32–128 channels), so guidance is not scored by the network it followed.  ``forward(x0) -> logits``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: int = 24):
        super().__init__()
        self.config = {"kind": "clean", "in_channels": in_channels, "num_classes": num_classes, "channels": channels}
        widths, layers, cin = (channels, 2 * channels, 4 * channels), [], in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, w), nn.ReLU()]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin, cin), nn.ReLU(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def classifier_logits(classifier: NoisyClassifier, process, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The classifier's logits at ``(x_t, t)``, its input scaled as the run's net sees it."""
    scale = process.net_input_scale(t).reshape(-1, *([1] * (x.ndim - 1)))
    return classifier(x * scale, process.net_time(t).float())


def per_sample_time(t, x: torch.Tensor) -> torch.Tensor:
    """The sampler's ``t`` (a number or a tensor) as float32 times of shape ``B`` on ``x``'s device."""
    tt = (t if isinstance(t, torch.Tensor) else torch.tensor(float(t))).to(x.device, torch.float32)
    return tt.expand(x.shape[0]) if tt.ndim == 0 else tt


ALPHA_FLOOR = 0.05
"""The smallest α the x0 shift ``(σ²/α)·g`` divides by: at pure noise (α = 0 at flow matching's t = 1) the shift
diverges, and a classifier there knows nothing; the floor caps it at 20·σ²·g."""


def score_shift(process, pred: Prediction, t: torch.Tensor, g: torch.Tensor) -> Prediction:
    """``pred`` with ``g`` added to the score ∇ log p(x_t): ``ε − σ·g`` and ``x0 + (σ²/α)·g`` (α at least
    :data:`ALPHA_FLOOR`)."""
    shape = (-1, *([1] * (g.ndim - 1)))
    alpha, sigma = process.alpha(t).clamp_min(ALPHA_FLOOR).reshape(shape), process.sigma(t).reshape(shape)
    return Prediction(pred.x0 + sigma ** 2 / alpha * g, pred.eps - sigma * g, pred.hidden)


def guided_rows(cond: torch.Tensor, t: torch.Tensor, interval: tuple[float, float] | None) -> torch.Tensor:
    """1 where a row is pulled: its label is not the null label and its ``t`` lies in ``interval`` (if any)."""
    keep = cond >= 0
    if interval is not None:
        keep = keep & (t >= interval[0]) & (t <= interval[1])
    return keep.reshape(-1, 1, 1, 1).float()


class GradientGuidance:
    """What classifier guidance and EluCD share: the wrapped denoiser's prediction, shifted along ``self.score(...)``
    (a per-row gradient, already scaled) where the sampler passes labels ``cond``.  Needs gradients:
    :func:`diffrep.generate.generate` samples without inference mode when it wraps the denoiser."""

    needs_grad = True

    def __init__(self, denoiser, classifier: nn.Module, scale: float):
        self.denoiser, self.classifier, self.scale = denoiser, classifier, scale
        self.process = denoiser.process

    def score(self, x: torch.Tensor, pred: Prediction, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor | None:
        """The score's shift at ``(x_t, t)``; ``None`` where nothing is pulled."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor | None = None, taps: tuple[str, ...] = ()) -> Prediction:
        pred = self.denoiser(x, t, cond, taps)
        if cond is None or self.scale == 0:
            return pred
        tt = per_sample_time(t, x)
        with torch.enable_grad():
            g = self.score(x, pred, tt, cond)
        return pred if g is None else score_shift(self.process, pred, tt, g)


class ClassifierGuidance(GradientGuidance):
    """ADM classifier guidance at scale ``s`` towards the labels the sampler passes as ``cond`` (which the wrapped
    denoiser also receives), for ``t`` in ``interval`` only when one is given: several classifiers, each guiding its
    own noise range, are PPAP's experts ("Towards Practical Plug-and-Play Diffusion Models", CVPR 2023)."""

    def __init__(self, denoiser, classifier: NoisyClassifier, scale: float,
                 interval: tuple[float, float] | None = None):
        super().__init__(denoiser, classifier, scale)
        self.interval = interval

    def score(self, x: torch.Tensor, pred: Prediction, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor | None:
        keep = guided_rows(cond, t, self.interval)
        if not keep.any():
            return None
        xg = x.detach().requires_grad_(True)
        logp = F.log_softmax(classifier_logits(self.classifier, self.process, xg, t).float(), dim=1)
        grad, = torch.autograd.grad(logp.gather(1, cond.clamp_min(0)[:, None]).sum(), xg)
        return self.scale * keep * grad


def save_classifier(classifier: nn.Module, card: dict, out: Path) -> None:
    """The weights as safetensors, with the architecture and the run it was trained for in the file's metadata."""
    from safetensors.torch import save

    from diffrep.io import atomic_write

    meta = {"config": json.dumps(classifier.config), "card": json.dumps(card)}
    with atomic_write(Path(out)) as f:
        f.write(save({k: v.contiguous() for k, v in classifier.state_dict().items()}, metadata=meta))


CLASSIFIERS = {"noisy": NoisyClassifier, "clean": CleanClassifier}


def load_classifier(path: Path | str, info: dict, kind: str = "noisy") -> tuple[nn.Module, dict]:
    """A classifier of ``kind`` saved by :func:`save_classifier`; a one-line error where it does not fit the run
    (``info``: its ``model.json``): another class count or input shape, or for a noisy one another process."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    clean = " --clean" if kind == "clean" else ""
    if not path.is_file():
        raise DiffrepError(f"classifier {path} not found: train one with diffrep train-classifier RUN{clean} "
                           f"--out {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        config, card = json.loads(meta["config"]), json.loads(meta["card"])
    except (OSError, ValueError, KeyError) as e:
        raise DiffrepError(f"{path} is not a classifier of diffrep train-classifier ({type(e).__name__})") from None
    config.setdefault("kind", "noisy")
    if config["kind"] != kind:
        raise DiffrepError(f"classifier {path} is a {config['kind']} classifier; this guidance needs a {kind} one "
                           f"(diffrep train-classifier RUN{clean})")
    x0_shape = list(info.get("x0_shape", info["image_shape"]))
    wanted = {"classes": info["num_classes"], "input": x0_shape, "process": info["process"]}
    found = {"classes": config["num_classes"], "input": card.get("x0_shape"), "process": card.get("process")}
    if kind == "clean":
        del wanted["process"]
    differs = [f"{k} {found[k]} ≠ the run's {wanted[k]}" for k in wanted if found[k] != wanted[k]]
    if differs:
        raise DiffrepError(f"classifier {path} does not fit this run: {'; '.join(differs)} (train one for it: "
                           f"diffrep train-classifier RUN{clean})")
    classifier = CLASSIFIERS[kind](**{k: v for k, v in config.items() if k != "kind"})
    classifier.load_state_dict(load_file(str(path)))
    return classifier.eval().requires_grad_(False), card
