"""Sample quality of a preset against training steps: the foundation issue's quality numbers.

Trains ``--preset`` in segments (each segment is ``diffrep train --resume`` with a larger
``--steps``, so the curve costs one training run), and after each milestone draws 1,000
class-balanced samples with Euler at 50 steps (no CFG) and judges them with the reference
encoder.  At the last milestone it also samples with each ``--cfg`` setting (a scale, or
``scale@lo,hi`` for guidance only inside the t interval [lo, hi], arXiv 2404.07724).  Wall-clock
training time excludes sampling and judging.

    python benchmarks/quality.py --preset quickstart --milestones 1000,2000,3000
    python benchmarks/quality.py --preset dit-tiny --milestones 2000,4000,6000,8000
    python benchmarks/quality.py --preset dit-tiny --set compile=true --milestones 1300,2600,3900,5200 \
        --cfg 1.5 --cfg 2.0@0.1,0.7 --name quality-dit-tiny-compile
    python benchmarks/quality.py --add-guidance --cfg 1.25@0.1,0.7 --name quality-dit-tiny-compile   # no training
    python benchmarks/quality.py --add-guidance --sampler heun:25 --cfg 1.5@0.1,0.7 --name quality-dit-tiny-compile
    python benchmarks/quality.py --extend 5200 --sampler heun:25 --cfg 1.5@0.1,0.7 --name quality-dit-tiny-4800
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _common import RESULTS, table, write_result

from diffrep.generate import sample_run
from diffrep.config import make_config, preset
from diffrep.data import load_npz
from diffrep.reference import judge
from diffrep.train import Trainer


def judge_run(run: Path, n: int, sampler: str = "euler:50", **sample_kw) -> dict:
    npz = run / "bench_samples.npz"
    name, steps = sampler.split(":")
    done = sample_run(run, npz, n=n, sampler=name, steps=int(steps), progress=False, compile_net=False, **sample_kw)
    verdict = judge(load_npz(npz)).as_dict()
    return {**verdict, "sampler": sampler, "nfe": done["nfe"], "cfg": done["cfg"], "cfg_interval": done["cfg_interval"],
            "sample_seconds": round(done["seconds"], 1)}


def guidance(spec: str) -> dict:
    """``"2.0@0.1,0.7"`` → ``{"cfg": 2.0, "cfg_interval": (0.1, 0.7)}``; ``"1.5"`` → ``{"cfg": 1.5}``."""
    scale, _, interval = spec.partition("@")
    return {"cfg": float(scale), **({"cfg_interval": tuple(float(v) for v in interval.split(","))} if interval else {})}


def guided_rows(run: Path, n: int, sampler: str, specs: list[str], step: int, minutes: float) -> list[dict]:
    """One judged row per ``--cfg`` spec on the run's current weights."""
    return [{"step": step, "train_minutes": minutes, **judge_run(run, n, sampler, **guidance(spec))} for spec in specs]


def add_guidance(name: str, run: Path, specs: list[str], n: int, sampler: str) -> None:
    """Judge more guidance settings on the last checkpoint of an earlier call's run; add them to its JSON."""
    result = json.loads((RESULTS / f"{name}.json").read_text())
    last = result["curve_no_cfg"][-1]
    for row in result["final_cfg"]:
        row.setdefault("sampler", "euler:50")          # rows from before --sampler existed
    result["final_cfg"] += guided_rows(run, n, sampler, specs, last["step"], last["train_minutes"])
    result["command_add_guidance"] = "python " + " ".join(sys.argv)
    print(table(result["final_cfg"], ["step", "sampler", "cfg", "cfg_interval", "nfe", "accuracy", "fd_ref", "fd_ratio"]))
    print(f"→ {write_result(name, {k: v for k, v in result.items() if k != 'machine'})}")


def extend(name: str, run: Path, steps: int, specs: list[str], n: int, sampler: str) -> None:
    """Resume the run of an earlier call to ``steps`` (bit-identical to training that long at once), add a
    curve point and the ``--cfg`` rows at the new last step to its JSON."""
    result = json.loads((RESULTS / f"{name}.json").read_text())
    last = result["curve_no_cfg"][-1]
    cfg = make_config(result["config"], {"steps": steps})
    start = time.perf_counter()
    Trainer(cfg, run, resume=True, progress=False).run()
    minutes = round(last["train_minutes"] + (time.perf_counter() - start) / 60, 2)
    result["curve_no_cfg"].append({"step": steps, "train_minutes": minutes, **judge_run(run, n)})
    result["final_cfg"] += guided_rows(run, n, sampler, specs, steps, minutes)
    result["config"] = vars(cfg)
    result["command_extend"] = "python " + " ".join(sys.argv)
    print(table(result["curve_no_cfg"] + result["final_cfg"],
                ["step", "train_minutes", "sampler", "cfg", "cfg_interval", "nfe", "accuracy", "fd_ref", "fd_ratio"]))
    print(f"→ {write_result(name, {k: v for k, v in result.items() if k != 'machine'})}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quickstart")
    p.add_argument("--milestones", help="comma-separated step counts, increasing")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--cfg", action="append", help="CFG for an extra last-milestone row: SCALE or SCALE@LO,HI "
                                                  "(repeatable; default 1.5)")
    p.add_argument("--sampler", default="euler:50", help="NAME:STEPS for the --cfg rows (the curve is always euler:50)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--name", help="result name (default quality-<preset>)")
    p.add_argument("--set", action="append", default=[], help="override a config option, key=value (repeatable)")
    p.add_argument("--add-guidance", action="store_true",
                   help="no training: judge the --cfg settings on the run of an earlier call and add them to its JSON")
    p.add_argument("--extend", type=int, metavar="STEPS",
                   help="resume the run of an earlier call to STEPS; add the curve point and --cfg rows to its JSON")
    a = p.parse_args()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    name = a.name or f"quality-{a.preset}"
    run = a.out / name
    if a.add_guidance:
        return add_guidance(name, run, a.cfg or ["1.5"], a.n, a.sampler)
    if a.extend:
        return extend(name, run, a.extend, a.cfg or ["1.5"], a.n, a.sampler)
    if not a.milestones:
        p.error("--milestones is required (unless --add-guidance)")
    shutil.rmtree(run, ignore_errors=True)
    rows, train_seconds = [], 0.0
    for i, steps in enumerate(int(s) for s in a.milestones.split(",")):
        cfg = make_config(preset(a.preset), overrides, {"steps": steps})
        start = time.perf_counter()
        Trainer(cfg, run, resume=i > 0, progress=False).run()
        train_seconds += time.perf_counter() - start
        row = {"step": steps, "train_minutes": round(train_seconds / 60, 2), **judge_run(run, a.n)}
        rows.append(row)
        print(f"step {steps}: {train_seconds / 60:.1f} min, accuracy {row['accuracy']:.4f}, FD_ref {row['fd_ref']:.3f} "
              f"(ratio {row['fd_ratio']:.2f})", file=sys.stderr)
    guided = guided_rows(run, a.n, a.sampler, a.cfg or ["1.5"], rows[-1]["step"], rows[-1]["train_minutes"])
    columns = ["step", "train_minutes", "sampler", "cfg", "cfg_interval", "nfe", "accuracy", "fd_ref", "fd_ref_train_vs_test",
               "fd_ratio"]
    print(table(rows + guided, columns))
    path = write_result(name, {"preset": a.preset, "overrides": overrides, "config": vars(cfg), "n_samples": a.n,
                               "sampler": "euler, 50 steps", "curve_no_cfg": rows, "final_cfg": guided,
                               "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
