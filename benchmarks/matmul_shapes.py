"""How fast this machine runs the matmuls of a DiT block's MLP, forward and backward, in bf16.

A linear layer y = x Wᵀ of a transformer costs three matmuls per training step: the forward, the
input gradient dx = dy W and the weight gradient dW = dyᵀ x.  The weight gradient reduces over
every token of the batch (K = batch × tokens) into a small output, and that shape is what bounds
MFU on a CPU.  This times the six matmuls of one MLP (dim → 4·dim → dim) at DiT-S/4's shapes
(batch 128 × 64 tokens, dim 384), then two other ways to compute the weight gradient: with the
gradient transposed into contiguous memory first, and as a sum over chunks of the tokens.  The
"cap" is the rate of the six together (total FLOPs ÷ total time) over the peak of
``_common.matmul_peak``: the MFU a step could reach if it did nothing but these matmuls.

    python benchmarks/matmul_shapes.py                         # → results/matmul_shapes.json
    python benchmarks/matmul_shapes.py --tokens 16384 --dim 768
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch
from _common import matmul_peak, table, write_result


def rate(matmul: Callable[[], torch.Tensor], flops: float, repeats: int = 10) -> float:
    """Median GFLOP/s of ``matmul`` over ``repeats`` timed calls after three warm-up calls."""
    for _ in range(3):
        matmul()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        times.append(time.perf_counter() - start)
    return flops / sorted(times)[repeats // 2] / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=128 * 64, help="batch × tokens per image (DiT-S/4 at batch 128: 8192)")
    p.add_argument("--dim", type=int, default=384, help="model width (DiT-S: 384); the MLP's hidden width is 4×")
    a = p.parse_args()
    m, d, h = a.tokens, a.dim, 4 * a.dim
    torch.manual_seed(0)
    x, hidden, w1, w2 = (torch.randn(*s, dtype=torch.bfloat16) for s in ((m, d), (m, h), (h, d), (d, h)))
    grad_out, grad_hidden = torch.randn(m, d, dtype=torch.bfloat16), torch.randn(m, h, dtype=torch.bfloat16)
    flops = 2 * m * d * h
    step = {  # name → (M, K, N, matmul)
        "fc1 forward: x W1ᵀ": (m, d, h, lambda: x @ w1.t()),
        "fc2 forward: h W2ᵀ": (m, h, d, lambda: hidden @ w2.t()),
        "fc2 input grad: dy W2": (m, d, h, lambda: grad_out @ w2),
        "fc2 weight grad: dyᵀ h": (d, m, h, lambda: grad_out.t() @ hidden),
        "fc1 input grad: dh W1": (m, h, d, lambda: grad_hidden @ w1),
        "fc1 weight grad: dhᵀ x": (h, m, d, lambda: grad_hidden.t() @ x),
    }
    grad_hidden_t = grad_hidden.t().contiguous()
    alternatives = {
        "fc1 weight grad, dhᵀ made contiguous first": (h, m, d, lambda: grad_hidden_t @ x),
        "fc1 weight grad, sum over 8 token chunks": (
            h, m, d, lambda: torch.bmm(grad_hidden.view(8, m // 8, h).transpose(1, 2), x.view(8, m // 8, d)).sum(0)),
    }
    peak = matmul_peak(torch.bfloat16, torch.device("cpu")) / 1e9
    rows = [{"matmul": name, "M": mm, "K": k, "N": n, "part_of_step": name in step,
             "gflop_s": round(rate(f, flops), 1)} for name, (mm, k, n, f) in {**step, **alternatives}.items()]
    for row in rows:
        row["of_peak"] = round(row["gflop_s"] / peak, 3)
    in_step = [r["gflop_s"] for r in rows if r["part_of_step"]]
    cap = len(in_step) / sum(1 / g for g in in_step) / peak
    print(table(rows, ["matmul", "M", "K", "N", "gflop_s", "of_peak"]))
    print(f"peak {peak:.0f} GFLOP/s; the six matmuls of a training step together: {cap:.1%} of it")
    path = write_result("matmul_shapes", {"tokens": m, "dim": d, "peak_gflop_s": round(peak, 1), "rows": rows,
                                          "mlp_matmul_cap": round(cap, 3), "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
