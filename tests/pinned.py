"""The fingerprint of a fixed-seed train → sample → eval pipeline, through the command line only, so that
it means the same before and after a reorganisation of the package (``tests/fixtures/pinned.json``).

    python tests/pinned.py            # print this machine's fingerprint as JSON
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

RUNS = {"fp32": ["--precision", "fp32"], "bf16-sra": ["--precision", "bf16", "--plugin", "sra"]}


def machine_kind() -> str:
    """The CPU kind whose kernels (and so whose bits) a fingerprint belongs to."""
    amx = torch.cpu._is_amx_tile_supported()
    return f"{torch.backends.cpu.get_cpu_capability()}{'+AMX' if amx else ''} torch {torch.__version__.split('+')[0]}"


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint() -> dict:
    """Train 20 steps (smoke preset, 2 threads), sample 32 images with Heun and CFG, evaluate them."""
    from diffrep.cli import main

    torch.set_num_threads(2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        for name, flags in RUNS.items():
            run = Path(tmp) / name
            assert main(["train", "--preset", "smoke", "--steps", "20", "--no-progress", *flags, "--out", str(run)]) == 0
            ckpt = sorted((run / "checkpoints").iterdir())[-1]
            weights = {f"{w}.{k}": v for w in ("model", "ema") for k, v in load_file(ckpt / f"{w}.safetensors").items()}
            npz = Path(tmp) / f"{name}.npz"
            assert main(["sample", str(run), "--n", "32", "--sampler", "heun", "--steps", "6", "--cfg", "1.5", "--seed",
                         "3", "--batch-size", "16", "--no-progress", "--out", str(npz), *flags[:2]]) == 0
            samples = np.load(npz)["arr_0"]
            evaluation = Path(tmp) / f"{name}.json"
            assert main(["eval", str(npz), "digits:test", "--metrics", "fd,kid,prdc", "--encoders", "reference,pixels",
                         "--kid-subset-size", "32", "--no-cache", "--no-progress", "--out", str(evaluation)]) == 0
            rows = json.loads(evaluation.read_text())["rows"]
            out[name] = {"weights_sha256": _tensors_sha256(weights),
                         "weights_abs_sum": float(sum(v.double().abs().sum() for v in weights.values())),
                         "samples_sha256": hashlib.sha256(samples.tobytes()).hexdigest(),
                         "samples_mean": float(samples.mean()),
                         "eval": {f"{r['encoder']}/{r['metric']}": r["values"] for r in rows}}
    return out


if __name__ == "__main__":
    json.dump({machine_kind(): fingerprint()}, sys.stdout, indent=1)
