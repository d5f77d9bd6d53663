"""Helpers shared by the benchmarks: machine facts, JSON output, a plain-text table."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Iterator

import torch

from diffrep.memory import reuse_freed_memory

RESULTS = Path(__file__).parent / "results"
reuse_freed_memory()     # as the `diffrep` command does: the benchmarks measure what users run


def machine() -> dict:
    """What the numbers were measured on: the CPU's model, instruction-set capability and bf16 support among them
    (``ATEN_CPU_CAPABILITY``/``ONEDNN_MAX_CPU_ISA``/``MKL_ENABLE_INSTRUCTIONS`` recorded when set: an emulated ISA)."""
    from diffrep.precision import cpu_facts

    isa = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
           if k in os.environ}
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), **cpu_facts(), **({"isa_limits": isa} if isa else {}),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PEAK_SHAPES = {"cpu": ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 384, 1536), (8192, 1536, 384), (8192, 256, 1024)),
               "cuda": ((8192, 8192, 8192),)}
"""(M, K, N) of the matmuls whose best rate is the peak.  On the CPU the square ones are not the
fastest: oneDNN's AMX kernels ran a transformer's tall, thin matmuls (K ≤ 384) up to 1.7× faster
than 2048² here, so a square-only peak would overstate MFU.  The first, small one finds an emulated
precision (:data:`SLOW_CALL_S`) before a large one takes minutes."""


SLOW_CALL_S = 0.5
"""A matmul call slower than this (bf16 emulated on an AVX2 CPU: 0.8 GFLOP/s) is timed once, not repeated."""


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """Best FLOP/s over :data:`PEAK_SHAPES` (best of 3 timings each) of ``torch.mm`` on random numbers in ``dtype``.
    Where one call takes over :data:`SLOW_CALL_S` (an emulated precision), that call's rate is the peak."""
    best = 0.0
    for m, k, n in PEAK_SHAPES["cpu" if device.type == "cpu" else "cuda"]:
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        out = torch.empty(m, n, dtype=dtype, device=device)
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        once = time.perf_counter() - start
        if once > SLOW_CALL_S:
            return max(best, 2 * m * k * n / once)
        for _ in range(2):
            torch.mm(a, b, out=out)
        for _ in range(3):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                torch.mm(a, b, out=out)
            synchronize(device)
            best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start))
    return best


def write_result(name: str, payload: dict) -> Path:
    """Write ``results/<name>.json`` (atomically) with the machine facts added."""
    from diffrep.io import atomic_write

    path = RESULTS / f"{name}.json"
    with atomic_write(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=1)
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    """A fixed-width text table of ``rows`` (dicts) over ``columns``."""
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "—" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


@contextlib.contextmanager
def figure(png: Path, size: tuple[float, float] = (5.5, 3.6)) -> Iterator:
    """A matplotlib ``Axes`` to draw on; the figure is saved to ``png`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    yield ax
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def judged(npz: Path, reference: torch.Tensor) -> dict:
    """The guidance benchmarks' columns for the samples in ``npz``: the reference CNN's accuracy (``None`` for samples
    without labels) and FD_ref, and in its features precision/recall (k = 5) against ``reference`` (features of test
    images) and the Vendi score."""
    from diffrep.data import load_npz
    from diffrep.evaluation import metrics
    from diffrep.reference import encode, judge, load_reference

    samples = load_npz(npz)
    verdict = judge(samples).as_dict()
    features, _ = encode(load_reference("mnist5k"), samples.images)
    pr = metrics.prdc(features, reference, k_pr=5, k_dc=5).values
    accuracy = verdict.get("accuracy")
    return {"accuracy": None if accuracy is None else round(accuracy, 4), "fd_ref": round(verdict["fd_ref"], 4),
            "precision": round(pr["precision"], 4), "recall": round(pr["recall"], 4),
            "vendi": round(metrics.vendi(features).values["vendi"], 3)}
