"""Distillation through the objective seam: a student run learns from a teacher run (:mod:`~diffrep.distill.spec`).

:class:`~diffrep.distill.guidance.GuidanceDistillation` (arXiv 2210.03142) folds classifier-free guidance into one
forward; :class:`~diffrep.distill.progressive.ProgressiveDistillation` (arXiv 2202.00512) halves the sampler's steps.
:func:`~diffrep.distill.student.distill` (``diffrep distill``) writes a student that every command reads as a run.
"""

from __future__ import annotations

import torch

from diffrep.distill.spec import distill_record, format_distill, parse_distill, takes_guidance_scale
from diffrep.errors import DiffrepError


def make_objective(spec: str, x0_shape: tuple[int, ...], num_classes: int, device: torch.device, autocast: bool):
    """The objective of a run's ``distill`` option: the denoising loss where it is empty, else the distillation
    objective with its teacher loaded (checked against the student's ``x0_shape`` and classes)."""
    from diffrep.distill.guidance import GuidanceDistillation
    from diffrep.distill.progressive import ProgressiveDistillation
    from diffrep.runs import load_run
    from diffrep.train.objectives import Denoising

    options = parse_distill(spec)
    if options is None:
        return Denoising()
    teacher = load_run(options["teacher"], "ema", device, step=options["step"])
    theirs = (tuple(teacher.x0_shape), teacher.info["num_classes"])
    if theirs != (tuple(x0_shape), num_classes):
        raise DiffrepError(f"teacher {options['teacher']} works on {theirs[0]} with {theirs[1]} classes but the "
                           f"student on {tuple(x0_shape)} with {num_classes}: distil on the teacher's data "
                           "(diffrep distill)")
    if options["kind"] == "guidance":
        return GuidanceDistillation(teacher, options["max_scale"], autocast)
    return ProgressiveDistillation(teacher, options["sampling_steps"], autocast, options.get("max_scale"))


__all__ = ["distill_record", "format_distill", "make_objective", "parse_distill", "takes_guidance_scale"]
