"""``--precision auto`` against fp32 and bf16: training img/s of the quickstart plans and dit-tiny on this machine.

The issue's bar: auto is never slower than the faster of fp32 and bf16 by more than 5%.  ``auto`` runs
exactly the configuration of the precision it picks, so the bar holds when it picks the faster one:
the verdict checks that (``picked_fastest``) beside the measured ratio, whose spread between identical
configurations (``auto`` against its own precision's row) shows this machine's noise.  Rows are
measured in interleaved rounds (fp32, bf16, auto, fp32, …) and each keeps its best round, so a busy
spell on a shared machine hits every variant alike.  Each img/s is also divided by the matmul peak of
the precision it ran in, measured in the same run (``mfu_vs_own_peak``).  To see what an AVX2-only
laptop does on an AVX-512/AMX machine, limit the instruction sets of PyTorch, oneDNN and MKL:

    python benchmarks/precision.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/precision.py --name precision-avx2 --bf16-steps 1
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import matmul_peak, table, write_result
from throughput import measure

from diffrep.precision import bf16_support

MODELS = {"quickstart": 128, "quickstart-small": 64, "dit-tiny": 128}
"""Rows of ``throughput.py`` and the batch each trains at."""
TOLERANCE = 0.95


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--steps", type=int, default=4, help="timed steps per row and round")
    p.add_argument("--bf16-steps", type=int, help="timed steps of bf16 rows (1 where bf16 is emulated: minutes a step)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--name", default="precision")
    a = p.parse_args()
    device = torch.device("cpu")
    native, why = bf16_support(device)
    best: dict[tuple[str, str], dict] = {}
    for _ in range(a.rounds):
        for name in a.models.split(","):
            for variant in ("fp32", "bf16", "default"):
                steps = a.bf16_steps if variant == "bf16" and a.bf16_steps else a.steps
                row = measure(name, variant, MODELS[name], steps, 1, device)
                print(f"{name} {variant} ({row['precision']}): {row['img_per_s']} img/s", file=sys.stderr)
                key = (name, variant)
                if key not in best or row["img_per_s"] > best[key]["img_per_s"]:
                    best[key] = {"row": name, **row}
    peak = {"bf16": matmul_peak(torch.bfloat16, device), "fp32": matmul_peak(torch.float32, device)}
    rows, verdicts = [], []
    for name in a.models.split(","):
        fastest = max(best[name, "fp32"]["img_per_s"], best[name, "bf16"]["img_per_s"])
        faster = max(("fp32", "bf16"), key=lambda v: best[name, v]["img_per_s"])
        for variant in ("fp32", "bf16", "default"):
            r = best[name, variant]
            r["variant"] = "auto" if variant == "default" else variant
            r["mfu_vs_own_peak"] = round(r["achieved_gflop_s"] * 1e9 / peak[r["precision"]], 3)
            r["vs_fastest"] = round(r["img_per_s"] / fastest, 3)
            rows.append(r)
        auto = best[name, "default"]
        same = best[name, auto["precision"]]["img_per_s"]
        verdicts.append({"row": name, "auto_precision": auto["precision"], "faster_precision": faster,
                         "picked_fastest": auto["precision"] == faster, "auto_vs_fastest": auto["vs_fastest"],
                         "auto_vs_same_precision_row": round(auto["img_per_s"] / same, 3),
                         "ok": auto["precision"] == faster or auto["vs_fastest"] >= TOLERANCE})
    print(f"bf16 native: {native} ({why}); matmul peak bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s, "
          f"fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s")
    print(table(rows, ["row", "model", "variant", "precision", "batch", "img_per_s", "achieved_gflop_s",
                       "mfu_vs_own_peak", "vs_fastest"]))
    print(table(verdicts, ["row", "auto_precision", "faster_precision", "auto_vs_fastest", "auto_vs_same_precision_row",
                           "ok"]))
    path = write_result(a.name, {"bf16_native": native, "bf16_reason": why,
                                 "matmul_peak_gflop_s": {k: round(v / 1e9, 1) for k, v in peak.items()},
                                 "rows": rows, "auto_within_5pct_of_fastest": verdicts,
                                 "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
