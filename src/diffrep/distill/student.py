"""A student run from a teacher run: its config (the teacher's, with the ``distill`` option and a fine-tuning schedule)
and its training (what ``diffrep distill`` does)."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

from diffrep.checkpoint import latest_checkpoint
from diffrep.config import TrainConfig, load_run_config, make_config
from diffrep.distill.spec import format_distill, parse_distill
from diffrep.errors import DiffrepError
from diffrep.plugins import plugin_net_options

STUDENT_DEFAULTS = {"lr": 5e-4, "warmup": 0, "ema_decay": 0.99, "ema_start": 0, "ckpt_every": 200, "keep_last": 2,
                    "grid_every": 200, "eval_every": 0}
STUDENT_STEPS = {"guidance": 400, "progressive": 200}
"""A student's schedule unless given: a short fine-tune from the teacher's weights (the papers train each student
from its teacher; their step counts are for ImageNet-scale nets, these were measured on the quickstart run:
docs/distill.md), 400 steps for a guidance student and 200 for each progressive halving."""
FIRST_TEACHER_STEPS = 64
"""The sampler steps a plain teacher is taken to need when no ``--sampling-steps`` is given (its student gets half)."""


def student_config(teacher: Path | str, kind: str, *, max_scale: float | None = None,
                   sampling_steps: int | None = None, overrides: dict | None = None) -> TrainConfig:
    """The config of a ``kind`` student of ``teacher``: the teacher's data, space, model, process and seed; its
    latest checkpoint pinned; plug-ins kept only where they shape the net (the student's loss is the distillation
    loss alone); :data:`STUDENT_DEFAULTS` under ``overrides``."""
    theirs = load_run_config(Path(teacher))
    ckpt = latest_checkpoint(Path(teacher))
    if ckpt is None:
        raise DiffrepError(f"{teacher} has no checkpoint yet: train it before distilling it")
    prior = parse_distill(theirs.distill) or {}
    options: dict = {"kind": kind, "teacher": str(Path(teacher).resolve()), "step": ckpt.step}
    if kind == "guidance":
        _check_guidance_teacher(teacher, theirs, prior)
        options["max_scale"] = 3.0 if max_scale is None else max_scale
    elif kind == "progressive":
        options["sampling_steps"] = _student_steps(teacher, prior, sampling_steps)
        if "max_scale" in prior:
            options["max_scale"] = prior["max_scale"]
    else:
        raise DiffrepError(f"--kind {kind!r}: choose guidance or progressive")
    sampler = {"grid_sampler": "ddim", "grid_steps": options["sampling_steps"]} if kind == "progressive" else {}
    shaping = [p for p in theirs.plugins if plugin_net_options([p])]
    base = {**asdict(theirs), "plugins": shaping, "precision": "auto", **STUDENT_DEFAULTS, **sampler,
            "steps": STUDENT_STEPS[kind], "distill": format_distill(options)}
    return make_config(base, overrides or {})


def _check_guidance_teacher(teacher: Path | str, cfg: TrainConfig, prior: dict) -> None:
    if "max_scale" in prior:
        raise DiffrepError(f"{teacher} is already guidance-distilled (it takes the scale as an input): distil it "
                           "further with --kind progressive")
    if not cfg.class_conditional or cfg.label_dropout == 0:
        why = "is unconditional" if not cfg.class_conditional else "was trained without label dropout"
        raise DiffrepError(f"{teacher} {why}: guidance distillation folds classifier-free guidance, which needs a "
                           "class-conditional teacher trained with --label-dropout > 0")


def _student_steps(teacher: Path | str, prior: dict, asked: int | None) -> int:
    """A progressive student's sampler steps: half its teacher's (a plain teacher is taken at
    :data:`FIRST_TEACHER_STEPS`); a warning where ``asked`` does not halve a progressive teacher's."""
    teacher_steps = prior.get("sampling_steps", FIRST_TEACHER_STEPS)
    if asked is None:
        if teacher_steps < 2:
            raise DiffrepError(f"{teacher} samples in {teacher_steps} step: there is nothing left to halve")
        return teacher_steps // 2
    if prior.get("kind") == "progressive" and 2 * asked != teacher_steps:
        warnings.warn(f"{teacher} was distilled for {teacher_steps} DDIM steps; its student of {asked} steps learns "
                      f"from it on a grid of {2 * asked}, which it was not trained for", stacklevel=3)
    return asked


def distill(teacher: Path | str, out: Path | str, kind: str, *, max_scale: float | None = None,
            sampling_steps: int | None = None, resume: bool | str = False, overwrite: bool = False,
            device: str = "auto", progress: bool = True, **overrides) -> Path:
    """Train a ``kind`` student of ``teacher`` into ``out`` (``overrides``: config options such as ``steps``,
    ``lr``, ``batch_size``); a resume continues the student with its own recorded config."""
    from diffrep.train import Trainer
    from diffrep.train.rundir import folder_state

    out = Path(out)
    if resume and not overwrite and folder_state(out) == "run":
        cfg = make_config({**asdict(load_run_config(out)), "precision": "auto"}, overrides)
        recorded = (parse_distill(cfg.distill) or {}).get("kind")
        if recorded != kind:
            raise DiffrepError(f"--resume: {out} holds {'a ' + recorded if recorded else 'no'} student, not a {kind} "
                               "one: pass its --kind, or choose another --out")
    else:
        cfg = student_config(teacher, kind, max_scale=max_scale, sampling_steps=sampling_steps, overrides=overrides)
    Trainer(cfg, out, resume=resume, device=device, progress=progress, overwrite=overwrite).run()
    return out
