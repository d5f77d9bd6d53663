"""The README's main job as a benchmark: ``diffrep quickstart``, timed, its numbers kept.

Runs the command exactly as a user does (a fresh process), then copies the run's
``quickstart.json`` (training seconds; accuracy and FD_ref of 1,000 class-balanced
samples at 50 Euler steps, without and with CFG 1.5) into ``results/quickstart.json``.

    python benchmarks/quickstart.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import table, write_result

RUN = Path("runs/bench/quickstart")


def main() -> None:
    shutil.rmtree(RUN, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffrep", "quickstart", "--out", str(RUN)], check=True)
    wall = time.perf_counter() - start
    result = json.loads((RUN / "quickstart.json").read_text())
    rows = [{"samples": name, **r} for name, r in result["results"].items()]
    print(f"training {result['train_seconds'] / 60:.2f} min ({result['steps']} steps); whole command {wall / 60:.2f} min")
    print(table(rows, ["samples", "n", "accuracy", "fd_ref", "fd_ref_train_vs_test", "fd_ratio"]))
    path = write_result("quickstart", {**result, "command_seconds": round(wall, 1), "run": str(RUN),
                                       "command": "python benchmarks/quickstart.py"})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
