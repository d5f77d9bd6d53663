"""The README's main job as a benchmark: ``diffrep quickstart``, timed, its numbers kept.

Runs the command exactly as a user does (a fresh process), then copies the run's
``quickstart.json`` (training seconds; accuracy and FD_ref of 1,000 class-balanced
samples at 50 Euler steps, without and with CFG 1.5) into ``results/quickstart.json``.

    python benchmarks/quickstart.py            # as on a fresh machine: an empty Inductor cache
    python benchmarks/quickstart.py --warm     # reuse this machine's compiled kernels
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
                   help="reuse this machine's Inductor cache (compiling then takes seconds, not about 47)")
    a = p.parse_args()
    shutil.rmtree(RUN, ignore_errors=True)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ) if a.warm else {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "diffrep", "quickstart", "--out", str(RUN)], check=True, env=env)
        wall = time.perf_counter() - start
    result = json.loads((RUN / "quickstart.json").read_text())
    rows = [{"samples": name, **r} for name, r in result["results"].items()]
    speed = mean_train_speed(RUN)
    print(f"training {result['train_seconds'] / 60:.2f} min ({result['steps']} steps, {speed} img/s); "
          f"whole command {wall / 60:.2f} min")
    print(table(rows, ["samples", "n", "accuracy", "fd_ref", "fd_ref_train_vs_test", "fd_ratio"]))
    path = write_result("quickstart", {**result, "train_img_per_s": speed, "command_seconds": round(wall, 1),
                                       "run": str(RUN), "inductor_cache": "warm" if a.warm else "cold",
                                       "command": "python benchmarks/quickstart.py" + (" --warm" if a.warm else "")})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
