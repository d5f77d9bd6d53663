"""``diffrep train``, ``quickstart``, ``presets`` and ``plugins``: training a model, and what to train with."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from diffrep.cli.common import (COMMANDS, FORMATTER, examples, non_negative_int, parents, positive_float, positive_int,
                                startup, write_json)
from diffrep.errors import DiffrepError


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None,
                     skip: tuple[str, ...] = ()) -> None:
    """One flag per :class:`~diffrep.config.TrainConfig` field (of ``sections``; all by default; none of ``skip``),
    generated from the field's metadata (its help, choices, minimum and action); every default is ``None``, so that
    only the flags given override the preset and the config file."""
    from diffrep.config import TrainConfig

    for f in fields(TrainConfig):
        if (sections is not None and f.metadata["section"] not in sections) or f.name in skip:
            continue
        meta, kind = f.metadata, str(f.type).split(" |")[0]
        default = f.default if f.default is not MISSING else None
        help_text = meta["help"] + (f" (default {default})" if default not in (None, False, True) else "")
        kw: dict = {"dest": f.name, "default": None, "help": help_text}
        if meta["action"] == "store_false":
            kw["action"] = "store_false"
        elif meta["action"] == "negatable":
            kw["action"] = argparse.BooleanOptionalAction
        elif meta["action"] == "append":
            kw["action"] = "append"
        elif kind == "bool":
            kw["action"] = "store_true"
        elif kind == "int":
            kw["type"] = {1: positive_int, 0: non_negative_int}.get(meta["minimum"], int)
        elif kind == "float":
            kw["type"] = float
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if choices:
            kw["choices"] = list(choices)
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
            if choices:
                kw["help"] += f"; one of {', '.join(choices)}"
        parser.add_argument(meta["flag"] or "--" + f.name.replace("_", "-"), **kw)


def register(sub) -> None:
    from diffrep.config import PRESETS

    t = sub.add_parser("train", help=COMMANDS["train"][1], formatter_class=FORMATTER,
                       parents=parents(precision=None),
                       description="Train a diffusion model. Options: defaults ← --preset ← --config YAML ← flags.",
                       epilog=examples("diffrep train --data mnist5k --model UNet-S --process flow --steps 2000 "
                                       "--batch-size 128 --out runs/x",
                                       "diffrep train --preset dit-tiny --out runs/dit",
                                       "diffrep train --out runs/x --steps 4000 --resume   # extend a finished run",
                                       "diffrep train --preset quickstart --out runs/x --resume auto   # start or continue",
                                       "diffrep train --config my.yaml --out runs/y"))
    t.add_argument("--out", required=True, type=Path, help="run directory (created; must not hold a run unless --resume)")
    t.add_argument("--preset", choices=list(PRESETS), help="start from a named preset (see `diffrep presets`)")
    t.add_argument("--config", type=Path, help="YAML file of options (keys as the flags, with _ or -; flat or in "
                   "the sections of a run's config.yaml)")
    t.add_argument("--resume", nargs="?", const=True, default=False, type=resume_mode, metavar="auto",
                   help="continue from the run's last good checkpoint; --resume auto: continue if --out holds a run, "
                        "else start one (for jobs that are restarted by a scheduler)")
    t.add_argument("--overwrite", action="store_true", help="delete the run in --out (checkpoints, logs, grids) and "
                   "start a new one; a folder that is not a diffrep run is never touched")
    add_config_flags(t)
    t.set_defaults(handler=cmd_train)

    q = sub.add_parser("quickstart", help=COMMANDS["quickstart"][1],
                       formatter_class=FORMATTER, parents=parents(),
                       epilog=examples("diffrep quickstart", "diffrep quickstart --size preset --out runs/qs2",
                                       "diffrep quickstart --out runs/qs3 --size small --steps 500"))
    q.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    q.add_argument("--size", choices=("auto", "preset", "small"), default="auto",
                   help="auto (default): time a few steps, run the preset (UNet-S, 800 steps) if it is projected "
                        "within 1.5 × --minutes here, else the small plan (UNet-XS, steps fitted to --minutes)")
    q.add_argument("--minutes", type=positive_float, default=13.0,
                   help="the wall-time budget --size auto plans for (default 13)")
    q.add_argument("--steps", type=positive_int, help="override the plan's step count")
    q.add_argument("--n", type=positive_int, help="samples to judge per set (default: the plan's, 1000 or 500)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted quickstart")
    q.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the net (off in the preset: over 800 CPU steps compiling costs more than it saves)")
    q.set_defaults(handler=cmd_quickstart)

    sub.add_parser("presets", help=COMMANDS["presets"][1], epilog=examples("diffrep presets"),
                   formatter_class=FORMATTER).set_defaults(handler=cmd_presets)
    sub.add_parser("plugins", help=COMMANDS["plugins"][1], formatter_class=FORMATTER,
                   epilog=examples("diffrep plugins", "diffrep train --preset dit-tiny --plugin repa:depth=2,weight=0.5 "
                                   "--out runs/repa")).set_defaults(handler=cmd_plugins)


def resume_mode(text: str) -> str:
    """argparse type of ``--resume``'s optional value: only ``auto``."""
    if text != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', got {text!r}")
    return text


def cmd_train(a) -> int:
    from diffrep.config import FIELD_NAMES, load_run_config, make_config, preset, read_yaml_config
    from diffrep.train import Trainer
    from diffrep.train.rundir import folder_state

    flags = {k: getattr(a, k) for k in FIELD_NAMES}
    if a.resume and not a.overwrite and folder_state(a.out) == "run" and not (a.preset or a.config):
        base = {**vars(load_run_config(a.out)), "precision": "auto"}  # auto on a resume: the recorded precision
        cfg = make_config(base, flags)
    else:
        cfg = make_config(preset(a.preset) if a.preset else {}, read_yaml_config(a.config) if a.config else {}, flags)
    trainer = Trainer(cfg, a.out, resume=a.resume, device=a.device, progress=not a.no_progress, overwrite=a.overwrite)
    if trainer.world.is_main:
        startup(trainer.precision)
        print(trainer.describe(), file=sys.stderr)
    step = trainer.run()
    if trainer.world.is_main:
        print(f"trained {step} steps → {a.out} ({run_contents(a.out)})")
    return 0


def cmd_quickstart(a) -> int:
    from diffrep.cli.evaluate import judge_table
    from diffrep.data import load_npz
    from diffrep.generate import sample_run
    from diffrep.quickstart import choose
    from diffrep.reference import judge
    from diffrep.train import Trainer

    if not a.resume and (a.out / "config.yaml").exists():
        raise DiffrepError(f"{a.out} already holds a run: pass --resume to continue it, or choose another --out")
    if a.minutes <= 0:
        raise DiffrepError(f"--minutes must be positive, got {a.minutes:g}")
    print(f"quickstart: {'reading the plan of ' + str(a.out) if a.resume else 'measuring this machine'} …", file=sys.stderr)
    choice = choose(a.size, steps=a.steps, n=a.n, compile_net=a.compile, device=a.device,
                    resume_from=a.out if a.resume else None, budget_s=60 * a.minutes)
    cfg, plan = choice.cfg, choice.plan
    eta = f", about {choice.eta_s / 60:.0f} min in all" if choice.eta_s else ""
    print(f"quickstart plan '{plan.name}' ({choice.why}): {cfg.model}, {cfg.process}, {cfg.steps} steps of "
          f"{cfg.batch_size} on {cfg.data}, then 2 × {choice.n} samples ({plan.sampler} {plan.sampler_steps}){eta} → {a.out}")
    start = time.perf_counter()
    trainer = Trainer(cfg, a.out, resume=a.resume, device=a.device, progress=not a.no_progress)
    startup(trainer.precision)
    trainer.run()
    train_s = time.perf_counter() - start
    rows = []
    for name, scale in plan.sample_sets():
        npz = a.out / f"samples_{'cfg' if scale != 1.0 else 'nocfg'}.npz"
        sample_run(a.out, npz, n=choice.n, sampler=plan.sampler, steps=plan.sampler_steps, cfg=scale,
                   grid=npz.with_suffix(".png"), device=a.device, progress=not a.no_progress,
                   compile_net=False)   # the plans' time budgets are sized eager; the small nets only break even
        rows.append((name, judge(load_npz(npz), cfg.data).as_dict()))
    total_s = time.perf_counter() - start
    write_json(a.out / "quickstart.json",
               {"plan": plan.name, "plan_reason": choice.why, "model": cfg.model, "precision": trainer.precision.name,
                "precision_reason": trainer.precision.reason, "train_seconds": round(train_s, 1),
                "total_seconds": round(total_s, 1), "eta_seconds": choice.eta_s and round(choice.eta_s, 1),
                "steps": cfg.steps, "batch_size": cfg.batch_size, "n_samples": choice.n,
                "sampler": f"{plan.sampler} {plan.sampler_steps}", "results": dict(rows)})
    print(f"\ntrained in {train_s / 60:.1f} min, {total_s / 60:.1f} min in all; run: {a.out} ({run_contents(a.out)})")
    print(f"samples: {a.out}/samples_nocfg.npz, {a.out}/samples_cfg.npz (+ .png grids); numbers: {a.out}/quickstart.json\n")
    print(judge_table(rows))
    return 0


def run_contents(run: Path) -> str:
    """What a training run wrote, for the closing message."""
    names = ("checkpoints/", "metrics.jsonl", "eval.jsonl", "tb/", "grids/")
    return ", ".join(n for n in names if (Path(run) / n.rstrip("/")).exists())


def cmd_presets(a) -> int:
    from diffrep.config import PRESETS

    width = max(map(len, PRESETS))
    for name, (line, _) in PRESETS.items():
        print(f"{name:{width}s}  {line}")
    return 0


def cmd_plugins(a) -> int:
    from diffrep.plugins import describe_plugins

    print(describe_plugins())
    return 0
