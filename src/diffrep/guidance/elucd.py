"""EluCD (Ma et al., arXiv 2310.11311): classifier guidance by an off-the-shelf classifier of *clean* images.

Defaults from the official code (``AlexMaOLS/EluCD``), as METHODS.md records them:

- the classifier reads the denoiser's ``x̂0`` and its gradient is taken w.r.t. ``x̂0`` only: no backpropagation through
  the diffusion net; that gradient stands for ``∇_{x_t}`` in the update;
- its ReLUs become ``Softplus(β)`` (β = 3 for DDPM-type models, 5 for EDM), so the gradient is smooth;
- the objective is the joint, temperature-calibrated ``log[exp(τ1·f_y) / Σ_j exp(τ2·f_j)]`` with τ1 = 1, τ2/τ1 = 0.5;
- the step is ADM's ``Σ_t·g`` plus a sine bump ``max(sin(πt/T)·max_var·γ, 0)·g`` with γ = 0.3.

diffrep's samplers are not DDPM's, so the step is written as a score shift (``x0 ← x0 + s·(σ²/α)·m(t)·g``, ``ε`` to
match), which is ADM's ``Σ_t·g`` for a DDPM step, and the bump becomes the factor ``m(t) = 1 + γ·sin(π·u)·β(1)/β(u)``:
the bump's size relative to ADM's step on the DDPM linear schedule (β from 0.1 to 20), at the point ``u`` of that
schedule with the same signal-to-noise ratio as ``t``, so every process gets the schedule at equal noise.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from diffrep.guidance.classifier import GradientGuidance, guided_rows
from diffrep.processes import Prediction

BETA_MIN, BETA_MAX = 0.1, 20.0
"""The DDPM linear schedule in continuous time (β(u) = 0.1 + 19.9·u), where EluCD's sine bump is defined."""


def smoothed(classifier: nn.Module, beta: float) -> nn.Module:
    """A copy of ``classifier`` with each ``nn.ReLU`` replaced by ``nn.Softplus(beta)`` (EluCD's smoothing)."""
    out = copy.deepcopy(classifier)
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Softplus(beta))
    return out


def ddpm_fraction(alpha_bar: torch.Tensor) -> torch.Tensor:
    """``u ∈ [0, 1]`` where the continuous DDPM linear schedule has ``ᾱ(u) = alpha_bar``, from
    ``log ᾱ = −(b0·u + (b1−b0)·u²/2)``."""
    a, b, c = (BETA_MAX - BETA_MIN) / 2, BETA_MIN, alpha_bar.clamp(1e-12, 1).log()
    return ((-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a)).clamp(0, 1)


def sine_bump(process, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """EluCD's schedule factor ``m(t) = 1 + γ·sin(π·u)·β(1)/β(u)`` at the DDPM point ``u`` of ``t``'s noise level."""
    alpha, sigma = process.alpha(t), process.sigma(t)
    u = ddpm_fraction(alpha ** 2 / (alpha ** 2 + sigma ** 2))
    return 1 + (gamma * torch.sin(math.pi * u) * BETA_MAX / (BETA_MIN + (BETA_MAX - BETA_MIN) * u)).clamp_min(0)


class EluCDGuidance(GradientGuidance):
    """EluCD at scale ``s`` towards the sampler's labels ``cond``; ``classifier(x0) -> logits`` reads images in the
    run's ``x0`` range ([-1, 1] pixels) and is used as given (smooth it with :func:`smoothed` first)."""

    def __init__(self, denoiser, classifier: nn.Module, scale: float = 1.0, tau_ratio: float = 0.5,
                 gamma: float = 0.3):
        super().__init__(denoiser, classifier, scale)
        self.tau_ratio, self.gamma = tau_ratio, gamma

    def score(self, x: torch.Tensor, pred: Prediction, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x0 = pred.x0.detach().requires_grad_(True)
        objective = calibrated_objective(self.classifier(x0).float(), cond.clamp_min(0), self.tau_ratio)
        grad, = torch.autograd.grad(objective.sum(), x0)
        bump = sine_bump(self.process, t, self.gamma).reshape(-1, 1, 1, 1)
        return self.scale * bump * guided_rows(cond, t, None) * grad


def calibrated_objective(logits: torch.Tensor, labels: torch.Tensor, tau_ratio: float = 0.5) -> torch.Tensor:
    """``log[exp(f_y) / Σ_j exp(τ2·f_j)]`` per row (τ1 = 1): EluCD's joint, temperature-calibrated objective."""
    return logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(tau_ratio * logits, dim=1)
