"""Wall-clock cost per training step of each plug-in, robust to a machine whose speed drifts.

One trainer per arm (the same preset and seed), two warm-up steps each, then ``--rounds``
rounds in which every arm in turn times ``--steps`` whole trainer steps; an arm's time is the
median over rounds, so a slow moment of a shared machine hits every arm alike.  ERW's
per-step cost is REPA's (``erw:warmup_steps=0``); its one-off warm-up is timed on its own and
reported in baseline steps.

    python benchmarks/plugin_overhead.py
    python benchmarks/plugin_overhead.py --arms baseline,repa --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import table, write_result

from diffrep.config import make_config, preset
from diffrep.train import Trainer

ARMS = "baseline,repa,sra,erw:warmup_steps=0,selfcond,cep,umd,context"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dit-tiny")
    p.add_argument("--arms", default=ARMS, help="comma-separated: baseline or a --plugin spec (options joined with '+')")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed steps per arm and round")
    p.add_argument("--name", default="plugin_overhead")
    a = p.parse_args()
    arms = [arm.replace("+", ",") for arm in a.arms.split(",")]
    with tempfile.TemporaryDirectory() as root:
        trainers = {}
        for arm in arms:
            cfg = make_config(preset(a.preset), {"plugins": [] if arm == "baseline" else [arm]})
            trainers[arm] = Trainer(cfg, Path(root) / str(len(trainers)), progress=False)
            for s in range(2):
                trainers[arm].train_step(s)
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for r in range(a.rounds):
            for arm, trainer in trainers.items():
                first = 2 + r * a.steps
                start = time.perf_counter()
                for s in range(first, first + a.steps):
                    loss = trainer.train_step(s)
                float(loss)
                times[arm].append((time.perf_counter() - start) / a.steps)
        cfg = make_config(preset(a.preset), {"plugins": ["erw"]})
        start = time.perf_counter()
        warmed = Trainer(cfg, Path(root) / "erw-warmup", progress=False)
        warmup_seconds = time.perf_counter() - start
    base = statistics.median(times["baseline"]) if "baseline" in times else None
    rows = [{"arm": arm, "sec_per_step": round(statistics.median(ts), 4), "min": round(min(ts), 4), "max": round(max(ts), 4),
             "overhead": None if base is None else round(statistics.median(ts) / base - 1, 3)} for arm, ts in times.items()]
    erw = {"warmup_steps": warmed.plugins[0].options.warmup_steps, "seconds": round(warmup_seconds, 1),
           "baseline_steps": None if base is None else round(warmup_seconds / base, 1)}
    print(table(rows, ["arm", "sec_per_step", "min", "max", "overhead"]))
    print(f"erw warm-up: {erw['warmup_steps']} steps in {erw['seconds']} s (≈ {erw['baseline_steps']} baseline steps)")
    path = write_result(a.name, {"preset": a.preset, "rounds": a.rounds, "steps": a.steps, "rows": rows,
                                 "erw_warmup": erw, "times": times, "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
