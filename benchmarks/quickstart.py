"""The README's main job as a benchmark: ``diffrep quickstart``, timed, its numbers kept.

Runs the command exactly as a user does (a fresh process), then copies the run's
``quickstart.json`` (training seconds; accuracy and FD_ref of 1,000 class-balanced
samples at 50 Euler steps, without and with CFG 1.5) into ``results/<--name>.json``, with the
machine's training speed during the run.  Compiled runs start from an empty Inductor cache, as
on a fresh machine, unless ``--warm``.

    python benchmarks/quickstart.py                                        # the preset as it is (eager)
    python benchmarks/quickstart.py --compile --name quickstart-compiled   # compiled, with an empty Inductor cache
    python benchmarks/quickstart.py --compile --warm                       # reuse this machine's compiled kernels
    python benchmarks/quickstart.py --steps 1000 --name quickstart-1000    # another length

On an AVX-512/AMX machine, an AVX2-only laptop's instruction set is emulated by limiting PyTorch's,
oneDNN's and MKL's kernels (bf16 is then emulated too, as it is there).  Such a machine's cores are
still faster than a 2-core AVX2 EPYC's (fp32 training ≈ 4× here), so ``--minutes`` can shrink the
budget by the measured ratio: the run then trains as many steps as the slower machine would::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/quickstart.py --name quickstart-avx2 --minutes 2.5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import table, write_result

from diffrep.config import load_run_config

RUN = Path("runs/bench/quickstart")


def mean_train_speed(run: Path) -> float:
    """Mean images/s over the run's logged intervals, the first (which includes compiling) left out:
    how fast the machine was during this measurement."""
    speeds = [row["img_per_s"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "img_per_s" in row]
    return round(sum(speeds[1:]) / len(speeds[1:]), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warm", action="store_true",
                   help="with --compile: reuse this machine's Inductor cache (compiling then takes seconds, not about 47)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="passed on to diffrep quickstart (default: the preset's setting)")
    p.add_argument("--steps", type=int, help="passed on to diffrep quickstart (default: the plan's)")
    p.add_argument("--size", help="passed on to diffrep quickstart (default auto)")
    p.add_argument("--minutes", type=float, help="passed on to diffrep quickstart (default 10)")
    p.add_argument("--name", default="quickstart", help="result name")
    a = p.parse_args()
    shutil.rmtree(RUN, ignore_errors=True)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ) if a.warm else {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        start = time.perf_counter()
        flags = [] if a.compile is None else ["--compile" if a.compile else "--no-compile"]
        flags += [] if a.steps is None else ["--steps", str(a.steps)]
        flags += [] if a.size is None else ["--size", a.size]
        flags += [] if a.minutes is None else ["--minutes", str(a.minutes)]
        subprocess.run([sys.executable, "-m", "diffrep", "quickstart", "--out", str(RUN), *flags], check=True, env=env)
        wall = time.perf_counter() - start
    result = json.loads((RUN / "quickstart.json").read_text())
    rows = [{"samples": name, **r} for name, r in result["results"].items()]
    speed = mean_train_speed(RUN)
    print(f"plan {result['plan']} ({result['model']}, {result['precision']}): training {result['train_seconds'] / 60:.2f} "
          f"min ({result['steps']} steps, {speed} img/s); whole command {wall / 60:.2f} min")
    print(table(rows, ["samples", "n", "accuracy", "fd_ref", "fd_ref_train_vs_test", "fd_ratio"]))
    compiled = load_run_config(RUN).compile
    path = write_result(a.name, {**result, "train_img_per_s": speed, "command_seconds": round(wall, 1), "run": str(RUN),
                                 "compile": compiled, "inductor_cache": ("warm" if a.warm else "cold") if compiled else None,
                                 "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
