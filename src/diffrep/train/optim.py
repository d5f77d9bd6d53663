"""The optimiser: AdamW with a choice of kernel."""

from __future__ import annotations

import torch
from torch import nn

from diffrep.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter],
                   head_params: list[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """AdamW with the chosen kernel: ``fused`` (one kernel for all tensors), ``foreach`` or ``for-loop``.

    Plug-in heads get a parameter group of their own: under FSDP the net's parameters are
    ``DTensor`` shards, and one multi-tensor kernel cannot mix them with plain tensors."""
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[cfg.adamw_impl]
    groups = [{"params": list(params)}] + ([{"params": list(head_params)}] if head_params else [])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay, **impl)
