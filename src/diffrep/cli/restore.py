"""``diffrep restore`` (inverse problems with a run as the prior) and ``diffrep translate`` (image to image by inversion)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffrep.cli.common import (COMMANDS, FORMATTER, check_outputs, examples, finite_float, parents, positive_float,
                                positive_int, startup, write_json)
from diffrep.errors import DiffrepError


def register(sub) -> None:
    from diffrep.inverse import SOLVERS, TASKS

    tasks = "\n".join(f"  {name:15s} {what}; options {opts or '—'}" for name, (what, opts) in TASKS.items())
    r = sub.add_parser("restore", help=COMMANDS["restore"][1],
                       formatter_class=FORMATTER, parents=parents(seed=0, batch_size=100, precision="net", outputs=True,
                                                                  batch_help="inputs per batch (each with its K draws)"),
                       description="Measure N images of --data with --task (y = A x + σ_y·n), restore each K times with "
                                   "--solver, and report PSNR, SSIM, coverage of the 90%% interval, the reference "
                                   f"encoder's class accuracy and FD_ref, NFE and seconds per image.\n\ntasks:\n{tasks}",
                       epilog=examples("diffrep restore runs/qs --task inpaint-box --solver reddiff --n 100 --out r.npz "
                                       "--grid r.png",
                                       "diffrep restore runs/qs --task inpaint-random --task-opt fraction=0.9 --solver "
                                       "daps --samples 8",
                                       "diffrep restore runs/qs --task sr4 --task-opt mode=bicubic --solver ddrm",
                                       "diffrep restore runs/qs --task deblur-gauss --solver dps --solver-opt zeta=0.5 "
                                       "--solver-opt norm=batch"))
    r.add_argument("run", type=Path, help="run directory written by `diffrep train`")
    r.add_argument("--task", required=True, choices=list(TASKS), metavar="TASK", help=f"one of {', '.join(TASKS)}")
    r.add_argument("--task-opt", action="append", default=[], metavar="KEY=VALUE", help="a task option (repeatable)")
    r.add_argument("--solver", required=True, choices=list(SOLVERS), metavar="SOLVER", help=f"one of {', '.join(SOLVERS)}")
    r.add_argument("--solver-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a solver default, e.g. steps=50 (repeatable; docs/restore.md lists them)")
    r.add_argument("--data", default="mnist5k:test", help="images to measure: a built-in split, an .npz or a folder")
    r.add_argument("--n", type=positive_int, default=100, help="inputs, class-balanced where labelled (default 100)")
    r.add_argument("--samples", type=positive_int, default=1, help="posterior draws per input, K (coverage needs ≥ 2)")
    r.add_argument("--sigma-y", type=finite_float, default=0.05, help="measurement noise σ_y in [-1, 1] units (default 0.05)")
    r.add_argument("--labels", default="none", choices=("none", "true"),
                   help="condition the prior on nothing (default) or on the true classes")
    r.add_argument("--weights", choices=("ema", "model"), default="ema")
    r.add_argument("--out", type=Path, help=".npz: truth, measurement, restorations N×K, operator parameters, metrics")
    r.add_argument("--grid", type=Path, help="PNG: truth | measurement | restorations | std, one row per input")
    r.add_argument("--json", type=Path, help="also write the metrics as JSON")
    r.set_defaults(handler=cmd_restore)

    t = sub.add_parser("translate", help=COMMANDS["translate"][1],
                       formatter_class=FORMATTER, parents=parents(seed=0, batch_size=100, precision="net", outputs=True),
                       description="Encode N images of --data into the noises of the SOURCE run's ancestral sampler and "
                                   "decode them with the TARGET run. Labels: none (the null class), true (the images' "
                                   "classes), shift:K (class + K) or a class index.",
                       epilog=examples("diffrep translate runs/qs runs/qs --source-labels true --target-labels shift:1 "
                                       "--s-start 5 --grid t.png",
                                       "diffrep translate runs/digits-up runs/mnist --data digits-up.npz --target-labels none"))
    t.add_argument("source", type=Path, help="the run that encodes")
    t.add_argument("target", type=Path, help="the run that decodes")
    t.add_argument("--data", default="mnist5k:test", help="images to translate (default mnist5k:test)")
    t.add_argument("--n", type=positive_int, default=100)
    t.add_argument("--source-labels", default="true", help="the source run's condition (default true)")
    t.add_argument("--target-labels", default="none", help="the target run's condition (default none)")
    t.add_argument("--s-start", type=positive_float, default=80.0,
                   help="noise level σ/α the code starts at (default 80; lower keeps more of the source)")
    t.add_argument("--steps", type=positive_int, default=50, help="ancestral steps (default 50)")
    t.add_argument("--out", type=Path, help=".npz: arr_0 translations, source images, metrics")
    t.add_argument("--grid", type=Path, help="PNG: rows of source | reconstruction | translation")
    t.set_defaults(handler=cmd_translate)


def key_values(pairs: list[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` flags as a dict, or a one-line error naming ``flag``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise DiffrepError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} steps=50")
        out[key.strip()] = value.strip()
    return out


def cmd_restore(a: argparse.Namespace) -> int:
    from diffrep.inverse import restore_run

    check_outputs(a, "out", "grid", "json")
    m = restore_run(a.run, a.task, a.solver, data=a.data, n=a.n, samples=a.samples,
                    task_opts=key_values(a.task_opt, "--task-opt"), solver_opts=key_values(a.solver_opt, "--solver-opt"),
                    sigma_y=a.sigma_y, labels=a.labels, seed=a.seed, batch_size=a.batch_size, weights=a.weights,
                    precision=a.precision, device=a.device, progress=not a.no_progress, out=a.out, grid=a.grid,
                    overwrite=a.overwrite, on_start=startup)
    print(format_metrics(m))
    if a.json:
        write_json(a.json, m)
    for path in (a.out, a.grid, a.json):
        if path is not None:
            print(f"→ {path}")
    return 0


def cmd_translate(a: argparse.Namespace) -> int:
    from diffrep.inverse.translate import translate_run

    check_outputs(a, "out", "grid")
    m = translate_run(a.source, a.target, data=a.data, n=a.n, source_labels=a.source_labels,
                      target_labels=a.target_labels, s_start=a.s_start, steps=a.steps, seed=a.seed,
                      batch_size=a.batch_size, precision=a.precision, device=a.device, progress=not a.no_progress,
                      out=a.out, grid=a.grid, overwrite=a.overwrite, on_start=startup)
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
    return 0


def format_metrics(m: dict) -> str:
    """One line per group: fidelity, calibration, judgement, cost."""
    lines = [f"{m['solver']} on {m['task']} ({m['n']} inputs × {m['samples']} draws, σ_y {m['sigma_y']})",
             f"  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  residual {m['residual_rms']:.3f}"]
    if "coverage" in m:
        c = m["coverage"]
        lines.append(f"  posterior mean PSNR {m['psnr_posterior_mean']:.2f} dB  coverage of the 90% interval "
                     f"{c['interval']:.3f} ({c['interval_varying']:.3f} where the draws differ)  in [min, max] "
                     f"{c['range']:.3f} (calibrated: {c['range_ideal']:.3f})")
    if "accuracy" in m or "fd_ref" in m:
        acc = f"{100 * m['accuracy']:.1f}%" if "accuracy" in m else "—"
        lines.append(f"  class accuracy {acc}  class entropy {m['class_entropy_bits']:.3f} bits  FD_ref {m['fd_ref']:.2f}")
    lines.append(f"  {m['nfe']} net calls, {m['seconds_per_image']:.3f} s per restoration ({m['precision']})")
    return "\n".join(lines)
