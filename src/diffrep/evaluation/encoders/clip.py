"""CLIP image features through ``open_clip`` (an optional extra: ``pip install diffrep[clip]``).

CLIP: Radford et al., arXiv 2103.00020; open_clip: Cherti et al., arXiv 2212.07143.
"""

from __future__ import annotations

import torch
from torch import nn

from diffrep.errors import DiffrepError

CLIP_MODEL = "ViT-L-14"
CLIP_PRETRAINED = "openai"


class ClipImageTower(nn.Module):
    """The image half of an open_clip model: normalised 224² images → image embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = model.visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def load_clip_image_tower(weights: str | None = None, model: str = CLIP_MODEL) -> ClipImageTower:
    """``model`` with the ``openai`` weights from open_clip's hub, or with a local checkpoint file ``weights``."""
    try:
        import open_clip
    except ImportError:
        raise DiffrepError("the clip encoder needs open_clip: pip install 'diffrep[clip]' (or open_clip_torch)") from None
    try:
        clip = open_clip.create_model(model, pretrained=weights or CLIP_PRETRAINED)
    except (OSError, RuntimeError) as e:
        raise DiffrepError(f"could not load CLIP {model} weights {weights or CLIP_PRETRAINED!r} ({e}); offline, "
                           "pass a local open_clip checkpoint with --encoder-weights") from None
    return ClipImageTower(clip).eval()
