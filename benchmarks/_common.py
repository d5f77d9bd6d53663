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

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """Best-of-3 FLOP/s of an ``n×n`` matmul of random numbers in ``dtype`` (n = 2048 on a CPU, 8192 on a GPU)."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
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
