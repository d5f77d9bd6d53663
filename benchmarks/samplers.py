"""FD_ref of samplers at a given number of network evaluations, same model, same seeds.

DPM-Solver++(2M) at 10 and 20 evaluations against Euler at 20, 50 and 100 (and Heun
at 19), on the process's default time grid and on a ρ = 2 grid (more steps at low
noise), 1,000 class-balanced samples each, no CFG.

    python benchmarks/samplers.py --run runs/bench/quickstart
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import table, write_result

from diffrep.generate import sample_run
from diffrep.data import load_npz
from diffrep.reference import judge

GRID = [("dpmpp_2m", 10, None), ("dpmpp_2m", 20, None), ("euler", 20, None), ("euler", 50, None), ("euler", 100, None),
        ("heun", 10, None), ("dpmpp_2m", 10, 2.0), ("dpmpp_2m", 20, 2.0), ("euler", 50, 2.0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained run directory (e.g. the quickstart's)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rows = []
    for sampler, steps, rho in GRID:
        npz = a.run / f"bench_{sampler}_{steps}_{rho}.npz"
        done = sample_run(a.run, npz, n=a.n, sampler=sampler, steps=steps, grid_rho=rho, seed=a.seed, progress=False,
                          compile_net=False)
        verdict = judge(load_npz(npz)).as_dict()
        rows.append({"sampler": sampler, "steps": steps, "grid_rho": rho or "default", "nfe": done["nfe"],
                     "seconds": round(done["seconds"], 1), **verdict})
        print(f"{sampler} {steps} rho {rho}: FD_ref {verdict['fd_ref']:.3f}", file=sys.stderr)
    print(table(rows, ["sampler", "steps", "grid_rho", "nfe", "seconds", "accuracy", "fd_ref", "fd_ratio"]))
    path = write_result("samplers", {"run": str(a.run), "checkpoint_step": done["checkpoint_step"], "n": a.n,
                                     "seed": a.seed, "cfg": 1.0, "rows": rows,
                                     "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
