"""Ablations behind the restoration table: RED-diff's step size and weight, DPS's step count, DAPS's last noise
level, and K posterior draws against a single one on box inpainting (``--arms main``); ΠGDM's correction clamp on a
flow and a VP run (``--arms pigdm``).

    python benchmarks/restore_ablation.py --run runs/qs
    python benchmarks/restore_ablation.py --run runs/qs-vp --arms pigdm --name restore-ablation-pigdm-vp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_result  # noqa: E402

from diffrep.inverse import restore_run  # noqa: E402

MAIN = [  # (question, task, task options, solver, solver options, n, K)
    ("reddiff: defaults", "inpaint-box", {}, "reddiff", {}, 50, 1),
    ("reddiff: lr 0.5 (its README)", "inpaint-box", {}, "reddiff", {"lr": "0.5"}, 50, 1),
    ("reddiff: λ 1.0", "inpaint-box", {}, "reddiff", {"lam": "1.0"}, 50, 1),
    ("reddiff: λ 0.05", "inpaint-box", {}, "reddiff", {"lam": "0.05"}, 50, 1),
    ("reddiff: 200 steps", "inpaint-box", {}, "reddiff", {"steps": "200"}, 50, 1),
    ("daps: σ_min 0.1 (the paper)", "inpaint-box", {}, "daps", {"s_min": "0.1"}, 50, 1),
    ("daps: σ_min 0.01 (diffrep)", "inpaint-box", {}, "daps", {}, 50, 1),
    ("dps: 8 draws, box", "inpaint-box", {}, "dps", {}, 25, 8),
    ("reddiff: 8 draws, box", "inpaint-box", {}, "reddiff", {}, 25, 8),
    ("dps: 250 steps, ζ' 1.0 (diffrep)", "sr4", {}, "dps", {}, 25, 1),
    ("dps: 1000 steps, ζ' 0.3 (the paper's SR)", "sr4", {}, "dps", {"steps": "1000", "zeta": "0.3"}, 25, 1),
]
RANDOM_70 = {"fraction": "0.7"}
PIGDM = [
    ("pigdm: correction clamped to [-2, 2] (diffrep)", "inpaint-random", RANDOM_70, "pigdm", {}, 25, 4),
    ("pigdm: no clamp (the paper)", "inpaint-random", RANDOM_70, "pigdm", {"max_correction": "0"}, 25, 4),
    ("pigdm: correction clamped to [-2, 2] (diffrep)", "sr4", {}, "pigdm", {}, 50, 1),
    ("pigdm: no clamp (the paper)", "sr4", {}, "pigdm", {"max_correction": "0"}, 50, 1),
]
ARMS = {"main": MAIN, "pigdm": PIGDM}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--name", default="restore-ablation")
    p.add_argument("--arms", choices=list(ARMS), default="main")
    a = p.parse_args()
    rows = []
    for question, task, task_opts, solver, solver_opts, n, k in ARMS[a.arms]:
        m = restore_run(a.run, task, solver, n=n, samples=k, task_opts=task_opts, solver_opts=solver_opts, progress=False)
        rows.append({"arm": question, "task": task, "solver": solver, "options": solver_opts, "n": n, "samples": k,
                     **{key: m.get(key) for key in ("psnr", "ssim", "psnr_posterior_mean", "accuracy", "fd_ref", "nfe",
                                                    "seconds_per_image")},
                     "coverage": m["coverage"]["interval"] if "coverage" in m else None})
        r = rows[-1]
        mean = f"{r['psnr_posterior_mean']:.2f}" if r["psnr_posterior_mean"] else "—"
        print(f"{question:42s} {task:12s} PSNR {r['psnr']:6.2f} (mean of draws {mean:>6s}) SSIM {r['ssim']:.3f} "
              f"acc {100 * r['accuracy']:5.1f} FD_ref {r['fd_ref']:6.2f} {r['seconds_per_image']:.3f} s/img", flush=True)
    write_result(a.name, {"command": "python benchmarks/restore_ablation.py " + " ".join(sys.argv[1:]),
                          "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
