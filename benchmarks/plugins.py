"""Representation plug-ins against the baseline: FD_ref and accuracy vs steps, and the cost per step.

Every arm trains the same preset (default ``dit-tiny``, DiT-T/4 on mnist5k) with the same seed and
step budget; only ``--plugin`` differs.  At each milestone the EMA model draws ``--n``
class-balanced samples (Euler, 50 steps, no CFG), judged by the reference encoder.  Wall-clock
per step comes from training time alone.  "Steps to the baseline's final FD_ref" interpolates
each arm's curve linearly between milestones.  ``--jobs N`` trains N arms at once in separate
processes (for a GPU, where these small nets leave it mostly idle; the per-step times then
include the sharing, so measure overheads with ``--jobs 1``).

    python benchmarks/plugins.py --milestones 200,400,600
    python benchmarks/plugins.py --arms baseline,repa:depth=2,sra --milestones 1000,2000,3400
    python benchmarks/plugins.py --arms baseline,repa,sra,erw,selfcond,cep,umd,context --milestones 1700,3400 \
        --n 1000 --jobs 8 --name plugins-gpu        # on a GPU
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import torch

from _common import figure, table, write_result
from quality import judge_run

from diffrep.config import make_config, preset
from diffrep.train import Trainer

RESULTS = Path(__file__).parent / "results"


def steps_to_reach(curve: list[dict], target: float) -> float | None:
    """First (interpolated) step at which ``fd_ref`` falls to ``target``; None if it never does."""
    previous = None
    for row in curve:
        if row["fd_ref"] <= target:
            if previous is None:
                return float(row["step"])
            s0, f0, s1, f1 = previous["step"], previous["fd_ref"], row["step"], row["fd_ref"]
            return s0 + (f0 - target) / (f0 - f1) * (s1 - s0)
        previous = row
    return None


def run_arm(arm: str, preset_name: str, milestones: list[int], n: int, root: Path) -> dict:
    plugins = [] if arm == "baseline" else [arm]
    run = root / arm.replace(":", "_").replace(",", "_").replace("=", "")
    shutil.rmtree(run, ignore_errors=True)
    curve, train_seconds = [], 0.0
    for i, steps in enumerate(milestones):
        cfg = make_config(preset(preset_name), {"steps": steps, "plugins": plugins, "ckpt_every": milestones[-1]})
        start = time.perf_counter()
        Trainer(cfg, run, resume=i > 0, progress=False).run()
        train_seconds += time.perf_counter() - start
        row = {"step": steps, "train_minutes": round(train_seconds / 60, 2), **judge_run(run, n)}
        curve.append(row)
        print(f"{arm} step {steps}: {train_seconds / 60:.1f} min, accuracy {row['accuracy']:.4f}, "
              f"FD_ref {row['fd_ref']:.3f}", file=sys.stderr)
    return {"arm": arm, "curve": curve, "seconds_per_step": train_seconds / milestones[-1]}


def run_arms(arms: list[str], preset_name: str, milestones: list[int], n: int, root: Path, jobs: int) -> list[dict]:
    """Every arm, one after the other or ``jobs`` at a time in spawned processes (same order either way)."""
    if jobs == 1:
        return [run_arm(arm, preset_name, milestones, n, root) for arm in arms]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        return list(pool.map(run_arm, arms, repeat(preset_name), repeat(milestones), repeat(n), repeat(root)))


def plot(arms: list[dict], png: Path) -> None:
    with figure(png) as ax:
        for arm in arms:
            ax.plot([r["step"] for r in arm["curve"]], [r["fd_ref"] for r in arm["curve"]], "o-", label=arm["arm"])
        ax.set_xlabel("training step")
        ax.set_ylabel("FD_ref (lower is better)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dit-tiny")
    p.add_argument("--arms", default="baseline,repa,sra", help="comma-separated: baseline or a --plugin spec "
                                                                 "(options joined with '+', e.g. repa:depth=3+weight=1)")
    p.add_argument("--milestones", default="200,400,600")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--out", type=Path, default=Path("runs/bench/plugins"))
    p.add_argument("--name", default="plugins", help="result name: results/<name>.json and .png")
    p.add_argument("--jobs", type=int, default=1, help="arms trained at once, in separate processes")
    a = p.parse_args()
    milestones = [int(s) for s in a.milestones.split(",")]
    arms = run_arms([arm.replace("+", ",") for arm in a.arms.split(",")], a.preset, milestones, a.n, a.out / a.name, a.jobs)
    base = arms[0]
    target = base["curve"][-1]["fd_ref"]
    rows = []
    for arm in arms:
        reach = steps_to_reach(arm["curve"], target)
        final = arm["curve"][-1]
        rows.append({"arm": arm["arm"], "final_fd_ref": final["fd_ref"], "final_accuracy": final["accuracy"],
                     "steps_to_baseline_final": reach,
                     "fraction_of_baseline_steps": None if reach is None else reach / milestones[-1],
                     "sec_per_step": arm["seconds_per_step"],
                     "overhead": arm["seconds_per_step"] / base["seconds_per_step"] - 1})
    print(table(rows, ["arm", "final_fd_ref", "final_accuracy", "steps_to_baseline_final",
                       "fraction_of_baseline_steps", "sec_per_step", "overhead"]))
    path = write_result(a.name, {"preset": a.preset, "milestones": milestones, "n_samples": a.n,
                                    "sampler": "euler, 50 steps, no CFG", "jobs": a.jobs, "summary": rows, "arms": arms,
                                    "command": "python " + " ".join(sys.argv)})
    plot(arms, RESULTS / f"{a.name}.png")
    print(f"→ {path}, {RESULTS / f'{a.name}.png'}")


if __name__ == "__main__":
    main()
