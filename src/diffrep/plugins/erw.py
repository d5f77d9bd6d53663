"""ERW: embedded representation warm-up before REPA (arXiv 2504.10188)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from diffrep.errors import DiffrepError
from diffrep.plugins.base import WarmStart
from diffrep.plugins.repa import REPA

@dataclass
class ErwOptions:
    encoder: str = "reference"      # as repa
    encoder_weights: str = ""
    depth: int = 2                  # blocks 1…depth are warmed up; block<depth> is aligned
    weight: float = 0.5             # c0 of the phase-2 alignment weight c0·2^(−step/half_life)
    half_life: int = 500            # h, in steps (scaled to the embedded data's run lengths)
    warmup_steps: int = 200         # phase 1
    proj_dim: int = 512
    data: str = ""                  # whose `reference` encoder: a built-in dataset ("": the training data)

    @property
    def schedule(self) -> str:
        return f"exp:{self.half_life}"


class ERW(REPA):
    """ERW — embedded representation warm-up (Liu et al., arXiv 2504.10188).

    Phase 1 (:meth:`initialize`, a fresh run only): a copy of the net and of the REPA projector
    train for ``warmup_steps`` on clean inputs (``t = t_min``) with the alignment loss alone, so
    only the parts up to block ``depth`` (patch, time and class embedders, blocks 1…depth) and the
    projector receive gradients; they train as the main loop does: the run's learning-rate warm-up and its
    gradient clipping (the official warm-up clips at 1.0).  Phase 2: exactly those tensors (the ones that received a
    gradient; listed in the checkpointed state) are copied into the full net and the projector,
    the EMA restarts from them, and training goes on normally with REPA whose weight decays as
    ``c0·2^(−step/h)``.  The transfer is explicit on every path (the reference code's happened on
    one resume path only); a resume continues from the checkpoint and skips phase 1.
    """

    name = "erw"

    def __init__(self, options: ErwOptions):
        if options.warmup_steps < 0:
            raise DiffrepError(f"erw: warmup_steps must be ≥ 0, got {options.warmup_steps}")
        super().__init__(options)
        self.transferred: list[str] = []
        self.warmup_align: list[float] = []

    def initialize(self, net, warm):
        if self.options.warmup_steps == 0:
            return False
        self.transfer(*self.warm_up(net, warm), net)
        return True

    def warm_up(self, net: nn.Module, warm: WarmStart) -> tuple[nn.Module, nn.Module]:
        """Phase 1 on copies of ``net`` and the projector; returns the trained copies."""
        from tqdm import tqdm

        from diffrep import distributed

        student, projector = copy.deepcopy(net).train(), copy.deepcopy(self.projector)
        params = [p for m in (student, projector) for p in m.parameters() if p.requires_grad]
        optimizer = warm.make_optimizer(params)
        denoiser, tap = self.process.denoiser(student, warm.autocast), self.taps[0]
        losses = []
        for k in tqdm(range(self.options.warmup_steps), desc="erw warm-up", disable=not warm.progress):
            batch = warm.batch(k)
            t = torch.full_like(batch.t, self.process.t_min)
            hidden = denoiser.hidden(self.process.corrupt(batch.x0, t, batch.noise), t, batch.cond, (tap,), batch.image)
            with torch.autocast(batch.x0.device.type, dtype=torch.bfloat16, enabled=warm.autocast):
                loss = -self.alignment(projector, hidden[tap], batch.pixels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if warm.grad_clip > 0:
                distributed.clip_grad_norm(params, warm.grad_clip)
            if warm.lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = warm.lr_at(k)
            optimizer.step()
            losses.append(loss.detach())
        self.warmup_align = [float(losses[0]), float(losses[-1])]
        return student, projector

    def transfer(self, student: nn.Module, projector: nn.Module, net: nn.Module) -> None:
        """Phase 2's explicit transfer: every tensor of ``student`` that received a gradient, and the projector."""
        trained = {name for name, p in student.named_parameters() if p.grad is not None}
        net.load_state_dict({k: v for k, v in student.state_dict().items() if k in trained}, strict=False)
        self.projector.load_state_dict(projector.state_dict())
        self.transferred = sorted(trained)

    def extra_state(self) -> dict:
        """The transferred tensors' names and the warm-up's first and last alignment loss."""
        return {"transferred": self.transferred, "warmup_align": self.warmup_align}

    def load_extra_state(self, state: dict) -> None:
        self.transferred, self.warmup_align = list(state["transferred"]), list(state["warmup_align"])
