"""Runs written by the previous release (0.1.0, flat config.yaml) still load, sample, evaluate and resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from diffrep.config import load_run_config
from diffrep.nets import MODELS, UNet

from helpers import TINY_UNET

FIXTURE = Path(__file__).parent / "fixtures" / "run-v0.1"


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "UNet-T", (UNet, TINY_UNET))
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def test_a_run_of_the_previous_release_loads_samples_evaluates_and_resumes(cli, old_run, tmp_path):
    assert "optim:" not in (old_run / "config.yaml").read_text(), "the fixture is a flat config of 0.1.0"
    code, out, err = cli("sample", old_run, "--n", 8, "--steps", 4, "--cfg", 1.5, "--no-progress",
                         "--out", tmp_path / "s.npz")
    assert code == 0, err
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (8, 8, 8, 1) and "from step 4" in out
    code, out, err = cli("eval", tmp_path / "s.npz", "digits:test", "--metrics", "fd", "--encoders", "pixels",
                         "--no-cache", "--no-progress")
    assert code == 0 and "fd" in out, err
    code, _, err = cli("features", old_run, "--t", "0.1", "--no-progress", "--out", tmp_path / "f.npz")
    assert code == 0, err
    code, out, err = cli("train", "--out", old_run, "--steps", 6, "--resume", "--no-progress")
    assert code == 0 and "trained 6 steps" in out, err
    assert "precision bf16: recorded by this run" in err          # 0.1.0 trained in bf16; the resume keeps it
    cfg = load_run_config(old_run)
    assert cfg.steps == 6 and cfg.model == "UNet-T" and "optim:" in (old_run / "config.yaml").read_text()
