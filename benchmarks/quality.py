"""Sample quality of a preset against training steps: the foundation issue's quality numbers.

Trains ``--preset`` in segments (each segment is ``diffrep train --resume`` with a larger
``--steps``, so the curve costs one training run), and after each milestone draws 1,000
class-balanced samples with Euler at 50 steps (no CFG) and judges them with the reference
encoder.  At the last milestone it also samples with CFG.  Wall-clock training time
excludes sampling and judging.

    python benchmarks/quality.py --preset quickstart --milestones 1000,2000,3000
    python benchmarks/quality.py --preset dit-tiny --milestones 2000,4000,6000,8000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from _common import table, write_result

from diffrep.cli import sample_run
from diffrep.config import make_config, preset
from diffrep.data import load_npz
from diffrep.reference import judge
from diffrep.trainer import Trainer


def judge_run(run: Path, n: int, **sample_kw) -> dict:
    npz = run / "bench_samples.npz"
    done = sample_run(run, npz, n=n, sampler="euler", steps=50, progress=False, **sample_kw)
    verdict = judge(load_npz(npz)).as_dict()
    return {**verdict, "nfe": done["nfe"], "cfg": done["cfg"], "cfg_interval": done["cfg_interval"],
            "sample_seconds": round(done["seconds"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quickstart")
    p.add_argument("--milestones", required=True, help="comma-separated step counts, increasing")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--cfg", type=float, default=1.5, help="CFG scale for the extra last-milestone row")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--name", help="result name (default quality-<preset>)")
    p.add_argument("--set", action="append", default=[], help="override a config option, key=value (repeatable)")
    a = p.parse_args()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    name = a.name or f"quality-{a.preset}"
    run = a.out / name
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
    guided = [{"step": rows[-1]["step"], "train_minutes": rows[-1]["train_minutes"], **judge_run(run, a.n, cfg=a.cfg)}]
    columns = ["step", "train_minutes", "cfg", "nfe", "accuracy", "fd_ref", "fd_ref_train_vs_test", "fd_ratio"]
    print(table(rows + guided, columns))
    path = write_result(name, {"preset": a.preset, "overrides": overrides, "config": vars(cfg), "n_samples": a.n,
                               "sampler": "euler, 50 steps", "curve_no_cfg": rows, "final_cfg": guided,
                               "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
