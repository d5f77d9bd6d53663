"""A distillation objective's teacher: a trained run's EMA net, frozen, and the student's starting point."""

from __future__ import annotations

import torch

from diffrep.errors import DiffrepError
from diffrep.runs import Run


class TeacherObjective:
    """Base of the distillation objectives: ``self.teacher`` is the teacher's denoiser (its EMA net, frozen, on the
    trainer's device, under the trainer's autocast).  :meth:`initialize` starts a new student as its teacher."""

    def __init__(self, teacher: Run, autocast: bool):
        self.run = teacher
        self.teacher = teacher.process.denoiser(teacher.net.requires_grad_(False).eval(), autocast)

    @torch.no_grad()
    def initialize(self, net: torch.nn.Module) -> None:
        """Copy the teacher's weights into ``net`` (both papers start each student from its teacher); a student's
        guidance-scale embedding, which its teacher lacks, keeps its zero start."""
        own = net.state_dict()
        for name, value in self.run.net.state_dict().items():
            if name not in own or own[name].shape != value.shape:
                raise DiffrepError(f"the student's net differs from its teacher's at {name}: distil with the teacher's "
                                   "model and data (diffrep distill builds the student from the teacher's config)")
            own[name].copy_(value)
        extra = [k for k in own if k not in self.run.net.state_dict() and not k.startswith("w_embedder.")]
        if extra:
            raise DiffrepError(f"the student's net has {extra[0]}, which its teacher lacks: distil with the teacher's "
                               "model and plug-ins")
