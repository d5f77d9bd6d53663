"""Helpers the test modules share (no test module imports another)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from diffrep.checkpoint import latest_checkpoint

SMOKE = ["--preset", "smoke", "--no-progress"]
"""``diffrep train`` options of a run that takes seconds (UNet-S on sklearn's 8×8 digits)."""
TINY_UNET = {"channels": 4, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": ()}
"""The size registered as ``UNet-T`` that ``fixtures/run-v0.1`` was trained with (keeps the fixture small)."""


def weights(run) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    return {**{f"model.{k}": v for k, v in ckpt.weights("model").items()},
            **{f"ema.{k}": v for k, v in ckpt.weights("ema").items()}}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


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


@contextlib.contextmanager
def moved_away(path):
    """``path`` moved aside for the block (a VAE a run needs, gone), put back after."""
    aside = path.with_name(path.name + "-moved")
    shutil.move(path, aside)
    try:
        yield
    finally:
        shutil.move(aside, path)
