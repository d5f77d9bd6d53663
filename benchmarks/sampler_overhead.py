"""The samplers' own cost beside the net: per-step bookkeeping, and gradient modes.

Two measurements, each the best of several repeats, with a net so small that the sampler's own work
dominates: (1) the time of one grid's α, σ, α', σ' computed per step from one-element tensors (the
previous release's way, ~4 tensor ops per coefficient per step) against once per call in float64
(today's :func:`diffrep.samplers.grid_coefficients`); (2) a 50-step Euler run of a small U-Net under
``torch.no_grad`` (what samplers forced before), under ``torch.inference_mode`` (what
:func:`diffrep.generate.generate` uses now) and with gradients on (what a DPS-style caller gets).

    python benchmarks/sampler_overhead.py
"""

from __future__ import annotations

import sys
import time

import torch
from _common import table, write_result

from diffrep.nets import build_net
from diffrep.processes import make_process
from diffrep.samplers import grid_coefficients, initial_noise, sample_euler


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def per_step_coefficients(process, ts: torch.Tensor) -> list:
    """The previous release's bookkeeping: each coefficient from a one-element tensor, step by step."""
    out = []
    for t in ts:
        t = t.reshape(1)
        out.append((float(process.alpha(t)), float(process.sigma(t)), float(process.d_alpha(t)),
                    float(process.d_sigma(t))))
    return out


def main() -> None:
    rows = []
    for name in ("flow", "vp", "edm"):
        process = make_process(name)
        ts = process.time_grid(50)
        old = best_of(lambda: per_step_coefficients(process, ts))
        new = best_of(lambda: grid_coefficients(process, ts))
        rows.append({"what": f"coefficients of a 50-step {name} grid", "before_ms": round(1e3 * old, 3),
                     "after_ms": round(1e3 * new, 3), "ratio": round(old / new, 1)})
    net = build_net("UNet-XS", 8, 1, 10).eval()
    process = make_process("flow")
    ts = process.time_grid(50)
    x = initial_noise(process, (16, 1, 8, 8), ts[0], torch.Generator().manual_seed(0))
    denoiser = process.denoiser(net)

    def run(mode) -> None:
        with mode():
            sample_euler(denoiser, x, ts)

    modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad}
    seconds = {k: best_of(lambda m=m: run(m), repeats=5) for k, m in modes.items()}
    for k, s in seconds.items():
        rows.append({"what": f"50 Euler steps, UNet-XS, 16×8×8, {k}", "before_ms": round(1e3 * seconds["no_grad"], 1),
                     "after_ms": round(1e3 * s, 1), "ratio": round(seconds["no_grad"] / s, 3)})
    print(table(rows, ["what", "before_ms", "after_ms", "ratio"]))
    path = write_result("sampler_overhead", {"rows": rows, "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
