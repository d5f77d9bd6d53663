"""FSDP2 against one unsharded process on a real device: the same weights, and the speed of each.

Three ``torchrun`` launches of ``diffrep train`` on the same preset and seed: one process without
``--fsdp`` (the reference), ``--nproc`` processes with ``--fsdp`` straight through, and the same
stopped half-way and resumed from its checkpoint.  For each: the largest difference of the model
and EMA weights from the reference, and the training images/s (median of the logged rates after
the first log).  ``--deterministic`` kernels, so the differences measure the sharding, not atomics.
The CPU test suite checks the same on 2 gloo processes; this is the check for a multi-GPU node
(NCCL needs one GPU per process, and with one process ``--fsdp`` trains unsharded).

    python benchmarks/fsdp_check.py --device cuda --nproc 8 --model DiT-B/2
    python benchmarks/fsdp_check.py --device cpu --nproc 2 --preset smoke --steps 6 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import table, write_result

from diffrep.checkpoint import latest_checkpoint


def train(nproc: int, out: Path, args: list[str]) -> float:
    """Run ``torchrun -m diffrep train``; return its wall-clock seconds (fails loudly with the log tail)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "diffrep", "train", *args, "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def images_per_second(run: Path) -> float:
    rates = [json.loads(line)["img_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:] or rates)


def max_difference(run: Path, reference: Path) -> dict[str, float]:
    a, b = latest_checkpoint(run), latest_checkpoint(reference)
    diffs = {}
    for which in ("model", "ema"):
        wa, wb = a.weights(which), b.weights(which)
        diffs[which] = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wb)
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--nproc", type=int, default=2, help="processes for the FSDP runs (one per GPU; at least 2)")
    p.add_argument("--preset", default="dit-tiny")
    p.add_argument("--model", help="override the preset's net")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--name", default="fsdp_check")
    a = p.parse_args()
    if a.nproc < 2:
        p.error("--nproc must be at least 2: with one process --fsdp trains unsharded (nothing to compare)")
    half = a.steps // 2
    common = ["--preset", a.preset, "--device", a.device, "--batch-size", str(a.batch_size), "--deterministic",
              "--ckpt-every", str(half), "--log-every", "5", "--grid-every", "0", *(["--model", a.model] if a.model else [])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds = train(1, root / "reference", [*common, "--steps", str(a.steps)])
        rows.append({"run": "1 process, no FSDP", "seconds": seconds, "img_per_s": images_per_second(root / "reference")})
        seconds = train(a.nproc, root / "fsdp", [*common, "--fsdp", "--steps", str(a.steps)])
        rows.append({"run": f"{a.nproc} process(es), --fsdp", "seconds": seconds,
                     "img_per_s": images_per_second(root / "fsdp"), **max_difference(root / "fsdp", root / "reference")})
        seconds = train(a.nproc, root / "resumed", [*common, "--fsdp", "--steps", str(half)])
        seconds += train(a.nproc, root / "resumed", [*common, "--fsdp", "--steps", str(a.steps), "--resume"])
        rows.append({"run": f"{a.nproc} process(es), --fsdp, stopped at {half} and resumed", "seconds": seconds,
                     "img_per_s": images_per_second(root / "resumed"),
                     **max_difference(root / "resumed", root / "reference")})
    print(table(rows, ["run", "seconds", "img_per_s", "model", "ema"]))
    path = write_result(a.name, {"device": a.device, "nproc": a.nproc, "preset": a.preset, "model": a.model,
                                 "steps": a.steps, "batch_size": a.batch_size, "cuda_devices": torch.cuda.device_count(),
                                 "rows": rows, "command": "python " + " ".join(sys.argv)})
    print(f"→ {path} (model / ema: largest |weight difference| from the 1-process run)")


if __name__ == "__main__":
    main()
