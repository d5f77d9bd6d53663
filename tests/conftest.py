"""Shared fixtures: tiny image sets on disk and a helper to run the CLI in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
if torch.cuda.is_available():  # the bit-identity tests then hold on a GPU machine too
    from diffrep.runtime import use_deterministic_kernels

    use_deterministic_kernels()

SMOKE = ["--preset", "smoke", "--no-progress"]


def pytest_report_header(config) -> str:
    """The CPU's kind and the precision ``auto`` picks on it, so that a slow run explains itself."""
    from diffrep.precision import cpu_facts, resolve_precision

    facts = cpu_facts()
    return (f"diffrep: CPU {facts['cpu_model']} ({facts['cpu_capability']}, {torch.get_num_threads()} threads); "
            f"{resolve_precision('auto', 'cpu').describe()}")


@pytest.fixture
def cli(capsys):
    """Run ``diffrep ARGS`` in this process; returns ``(exit code, stdout, stderr)``."""
    from diffrep.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_cli_process(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m diffrep ARGS`` in a subprocess (for signals and the module entry point)."""
    return subprocess.run([sys.executable, "-m", "diffrep", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def write_images(folder: Path, n: int, size: tuple[int, int] = (8, 8), mode: str = "L", seed: int = 0) -> list[Path]:
    """``n`` random PNG images in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
