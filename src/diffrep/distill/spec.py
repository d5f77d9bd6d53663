"""The ``distill`` option of a run's config: which teacher a student learns from, and how.

``guidance:teacher=RUN,step=N,max_scale=S`` — guidance distillation (Meng et al., arXiv 2210.03142, stage 1): the
student takes the guidance scale as an input and matches its teacher's classifier-free guidance at scales drawn from
``[1, S]``.  ``progressive:teacher=RUN,step=N,sampling_steps=K[,max_scale=S]`` — progressive distillation (Salimans
& Ho, arXiv 2202.00512): the student's one DDIM step matches two of its teacher's on the grid of ``2K`` steps; with
``max_scale`` the teacher is a guidance-distilled student and the scale input is kept (Meng et al.'s stage 2).
``step`` pins the teacher's checkpoint, so a resumed student learns from the same weights.
"""

from __future__ import annotations

from pathlib import Path

from diffrep.errors import DiffrepError

KINDS = ("guidance", "progressive")
OPTIONS: dict[str, type] = {"teacher": str, "step": int, "max_scale": float, "sampling_steps": int}
REQUIRED = {"guidance": ("teacher", "step", "max_scale"), "progressive": ("teacher", "step", "sampling_steps")}


def parse_distill(spec: str) -> dict | None:
    """``"guidance:teacher=runs/qs,step=800,max_scale=3"`` → ``{"kind": "guidance", "teacher": …}``; ``""`` →
    ``None``."""
    if not spec:
        return None
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise DiffrepError(f"distill {spec!r}: unknown kind {kind!r}; choose {' or '.join(KINDS)}")
    options: dict = {"kind": kind}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in OPTIONS:
            raise DiffrepError(f"distill {spec!r}: {item!r} is not one of {', '.join(k + '=' for k in OPTIONS)}")
        try:
            options[key] = OPTIONS[key](value)
        except ValueError:
            raise DiffrepError(f"distill {spec!r}: {key}={value} is not a {OPTIONS[key].__name__}") from None
    missing = [k for k in REQUIRED[kind] if k not in options]
    if missing:
        raise DiffrepError(f"distill {spec!r}: {kind} distillation needs {', '.join(k + '=' for k in missing)}")
    if options.get("max_scale", 2.0) <= 1.0:
        raise DiffrepError(f"distill {spec!r}: max_scale must be above 1 (scale 1 is the unguided model)")
    if options.get("sampling_steps", 1) < 1:
        raise DiffrepError(f"distill {spec!r}: sampling_steps must be at least 1")
    return options


def format_distill(options: dict) -> str:
    """The inverse of :func:`parse_distill`."""
    return options["kind"] + ":" + ",".join(f"{k}={options[k]}" for k in OPTIONS if k in options)


def takes_guidance_scale(spec: str) -> bool:
    """Whether the student of ``spec`` has a guidance-scale input (:class:`~diffrep.nets.common.ScaleEmbedding`)."""
    options = parse_distill(spec)
    return options is not None and "max_scale" in options


def distill_record(spec: str) -> dict | None:
    """What ``model.json`` says about a student (``sample`` reads it): the kind, the teacher, the scale range the
    student was trained on, and a progressive student's sampler and steps."""
    options = parse_distill(spec)
    if options is None:
        return None
    record = {"kind": options["kind"], "teacher": str(Path(options["teacher"])), "teacher_step": options["step"]}
    if "max_scale" in options:
        record["scale_range"] = [1.0, options["max_scale"]]
    if options["kind"] == "progressive":
        record.update(sampler="ddim", steps=options["sampling_steps"])
    return record
