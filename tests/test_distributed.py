"""torchrun on CPU: 2 gloo processes give the weights and samples of 1 process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from conftest import SMOKE
from test_trainer import weights


def torchrun(nproc: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "diffrep", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_train_the_same_weights_as_one(tmp_path):
    args = ["train", *SMOKE, "--steps", 6, "--ckpt-every", 6, "--precision", "fp32", "--grad-accum", 2]
    torchrun(1, *args, "--out", tmp_path / "one")
    two = torchrun(2, *args, "--out", tmp_path / "two")
    assert two.stdout.count("trained 6 steps") == 1, "only rank 0 prints"
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    logs = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 2


def test_samples_do_not_depend_on_the_number_of_processes(tmp_path):
    run = tmp_path / "run"
    torchrun(1, "train", *SMOKE, "--steps", 4, "--out", run)
    for nproc in (1, 2):
        torchrun(nproc, "sample", run, "--num-samples", 25, "--steps", 3, "--batch-size", 5, "--sampler", "euler_maruyama",
                 "--no-progress", "--out", tmp_path / f"s{nproc}.npz")
    with np.load(tmp_path / "s1.npz") as one, np.load(tmp_path / "s2.npz") as two:
        assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])
