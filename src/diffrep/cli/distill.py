"""``diffrep distill``: a student run from a teacher run (guidance or progressive distillation)."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from diffrep.cli.common import COMMANDS, FORMATTER, examples, parents, positive_float, positive_int
from diffrep.cli.train import add_config_flags, resume_mode, run_contents


def register(sub) -> None:
    d = sub.add_parser("distill", help=COMMANDS["distill"][1], formatter_class=FORMATTER, parents=parents(),
                       description="Distil a trained run (the teacher) into a student run that every command reads "
                                   "like any other. guidance: the student takes the CFG scale as an input, so "
                                   "`sample --cfg S` costs one forward per step (arXiv 2210.03142). progressive: the "
                                   "student's DDIM step does two of its teacher's; repeat to halve again "
                                   "(arXiv 2202.00512). The student starts from the teacher's weights, on its data.",
                       epilog=examples("diffrep distill runs/qs --kind guidance --max-scale 3 --out runs/qs-g",
                                       "diffrep sample runs/qs-g --cfg 1.5 --out s.npz   # one forward per step",
                                       "diffrep distill runs/qs --kind progressive --sampling-steps 32 --out qs-32",
                                       "diffrep distill qs-32 --kind progressive --out qs-16   # halves again",
                                       "diffrep sample qs-16 --out s.npz   # ddim, 16 steps: the student's own"))
    d.add_argument("run", type=Path, help="the teacher: a run directory of `diffrep train` (or of `diffrep distill`)")
    d.add_argument("--kind", required=True, choices=("guidance", "progressive"))
    d.add_argument("--out", required=True, type=Path, help="the student's run directory")
    d.add_argument("--max-scale", type=positive_float, help="guidance: the largest CFG scale the student learns "
                   "(scales drawn from 1…S; default 3)")
    d.add_argument("--sampling-steps", type=positive_int, help="progressive: the student's DDIM steps (its teacher "
                   "is run at twice as many); default: half a progressive teacher's, else 32")
    d.add_argument("--resume", nargs="?", const=True, default=False, type=resume_mode, metavar="auto",
                   help="continue the student in --out (--resume auto: continue or start)")
    d.add_argument("--overwrite", action="store_true", help="delete the run in --out and start the student over")
    add_config_flags(d, sections=("optim", "log"), skip=("plugins",))
    d.set_defaults(handler=cmd_distill)


def cmd_distill(a) -> int:
    from diffrep.config import TrainConfig
    from diffrep.distill.student import distill

    names = [f.name for f in fields(TrainConfig) if f.metadata["section"] in ("optim", "log")]
    overrides = {k: getattr(a, k) for k in names if getattr(a, k, None) is not None}
    out = distill(a.run, a.out, a.kind, max_scale=a.max_scale, sampling_steps=a.sampling_steps, resume=a.resume,
                  overwrite=a.overwrite, device=a.device, progress=not a.no_progress, **overrides)
    print(f"distilled {a.run} ({a.kind}) → {out} ({run_contents(out)})", file=sys.stderr)
    return 0
