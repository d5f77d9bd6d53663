"""Backbones and the size registry that feeds the CLI's ``--model`` choices.

Every net has the contract ``net(x, t, cond, taps=()) -> (out, {tap_name: hidden})``
and a ``tap_names`` tuple; ``net(..., taps_only=True)`` returns ``(None, {tap: hidden})`` and
stops after the deepest tap (features, teachers and warm-ups need no more).
"""

from __future__ import annotations

from torch import nn

from diffrep.errors import DiffrepError
from diffrep.nets.common import NULL_LABEL
from diffrep.nets.dit import DIT_SIZES, DiT
from diffrep.nets.unet import UNET_SIZES, UNet

MODELS: dict[str, tuple[type[nn.Module], dict]] = {
    **{f"DiT-{size}/{patch}": (DiT, {**cfg, "patch_size": patch}) for size, cfg in DIT_SIZES.items() for patch in (2, 4, 8)},
    **{name: (UNet, cfg) for name, cfg in UNET_SIZES.items()},
}


def build_net(name: str, image_size: int, in_channels: int, num_classes: int, **overrides) -> nn.Module:
    """Instantiate a registered size, e.g. ``build_net("DiT-S/4", 32, 1, 10)``."""
    if name not in MODELS:
        raise DiffrepError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    cls, cfg = MODELS[name]
    return cls(image_size=image_size, in_channels=in_channels, num_classes=num_classes, **{**cfg, **overrides})


__all__ = ["MODELS", "NULL_LABEL", "DiT", "UNet", "build_net"]
