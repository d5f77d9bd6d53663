"""torchrun on CPU: 2 gloo processes give the weights and samples of 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import SMOKE, weights

from diffrep.checkpoint import latest_checkpoint


def torchrun(nproc: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "diffrep", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU, also on a GPU machine
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_train_the_same_weights_as_one(tmp_path):
    """With a plug-in that initialises the net (ERW's warm-up runs on every rank, rank 0's result is
    broadcast) and has a trainable head outside the DDP-wrapped net (its gradients averaged too),
    and plug-ins that draw per sample (SRA's teacher times, CEP's perturbations: sliced by rank)."""
    args = ["train", *SMOKE, "--steps", 6, "--ckpt-every", 6, "--precision", "fp32", "--grad-accum", 2,
            "--plugin", "erw:warmup_steps=2", "--plugin", "sra", "--plugin", "cep"]
    torchrun(1, *args, "--out", tmp_path / "one")
    two = torchrun(2, *args, "--out", tmp_path / "two")
    assert two.stdout.count("trained 6 steps") == 1, "only rank 0 prints"
    a, b = ({**weights(run), **latest_checkpoint(run).weights("heads")} for run in (tmp_path / "one", tmp_path / "two"))
    assert any(k.startswith("0.projector") for k in a), list(a)[:5]
    for k in a:     # summation order differs (per-rank means, then DDP's average): rounding only
        torch.testing.assert_close(a[k], b[k], atol=3e-5, rtol=1e-4)
    logs = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 2


@pytest.mark.slow      # 70–105 s (two compiles in two processes): `python -m pytest -m slow`
def test_compiled_ddp_with_accumulation_trains_the_weights_of_one_eager_process(tmp_path):
    """torch.compile of the DDP-wrapped net, with 2 micro-batches under DDP's no_sync and CEP's hook
    inside the compiled net."""
    args = ["train", *SMOKE, "--model", "DiT-T/4", "--plugin", "cep", "--steps", 4, "--ckpt-every", 4,
            "--precision", "fp32"]
    torchrun(1, *args, "--out", tmp_path / "one")
    two = torchrun(2, *args, "--compile", "--grad-accum", 2, "--out", tmp_path / "two")
    assert "torch.compile failed" not in two.stderr, "compiled, not the eager fallback"
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=3e-5, rtol=1e-4)


def test_fsdp_trains_and_resumes_to_the_weights_of_one_process(tmp_path):
    """FSDP2 over 2 gloo processes, stopped at step 3 and resumed from its checkpoint (full tensors,
    re-sharded on load), with sample grids (the EMA is gathered on every rank) and a plug-in head
    outside the sharded net: the weights, EMA, heads and AdamW moments of one unsharded process."""
    args = ["train", *SMOKE, "--steps", 6, "--ckpt-every", 3, "--grid-every", 3, "--precision", "fp32",
            "--grad-accum", 2, "--plugin", "erw:warmup_steps=2"]
    torchrun(1, *args, "--out", tmp_path / "one")
    torchrun(2, *args, "--fsdp", "--steps", 3, "--out", tmp_path / "two")
    torchrun(2, *args, "--fsdp", "--resume", "--out", tmp_path / "two")
    ckpts = [latest_checkpoint(tmp_path / d) for d in ("one", "two")]
    a, b = ({**weights(tmp_path / d), **c.weights("heads")} for d, c in zip(("one", "two"), ckpts))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=3e-5, rtol=1e-4)
    moments = [c.state()["optimizer"]["state"] for c in ckpts]
    assert moments[0].keys() == moments[1].keys()
    for i in moments[0]:
        torch.testing.assert_close(moments[0][i]["exp_avg_sq"], moments[1][i]["exp_avg_sq"], atol=1e-8, rtol=1e-3)
    assert sorted(p.name for p in (tmp_path / "two" / "grids").iterdir()) == ["step_0000003.png", "step_0000006.png"]


def test_samples_do_not_depend_on_the_number_of_processes(tmp_path):
    run = tmp_path / "run"
    torchrun(1, "train", *SMOKE, "--steps", 4, "--out", run)
    for nproc in (1, 2):
        torchrun(nproc, "sample", run, "--num-samples", 25, "--steps", 3, "--batch-size", 5, "--sampler", "euler_maruyama",
                 "--no-progress", "--out", tmp_path / f"s{nproc}.npz")
    with np.load(tmp_path / "s1.npz") as one, np.load(tmp_path / "s2.npz") as two:
        assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])


def test_features_do_not_depend_on_the_number_of_processes(tmp_path):
    for nproc in (1, 2):
        torchrun(nproc, "features", "mnist5k:test", "--encoder", "reference", "--batch-size", 96, "--no-cache",
                 "--no-progress", "--out", tmp_path / f"f{nproc}.npz")
    with np.load(tmp_path / "f1.npz") as one, np.load(tmp_path / "f2.npz") as two:
        assert one["features"].shape == (1000, 128)
        assert np.array_equal(one["features"], two["features"]) and np.array_equal(one["logits"], two["logits"])


def test_evaluation_does_not_depend_on_the_number_of_processes(tmp_path):
    for nproc in (1, 2):
        torchrun(nproc, "eval", "mnist5k:test", "mnist5k:train", "--encoders", "reference,pixels",
                 "--metrics", "fd,kid,prdc,is", "--batch-size", 96, "--no-cache", "--no-progress",
                 "--out", tmp_path / f"e{nproc}.json")
    one, two = (json.loads((tmp_path / f"e{n}.json").read_text()) for n in (1, 2))
    values = [[(row["encoder"], row["metric"], row["values"]) for row in rows] for rows in (one["rows"], two["rows"])]
    assert len(values[0]) == 8 and values[0] == values[1]


def test_a_failing_rank_stops_the_job_instead_of_hanging(tmp_path):
    script = tmp_path / "fail_rank1.py"
    script.write_text("import os, sys\nfrom diffrep.cli import main\n"
                      "if os.environ['RANK'] == '1':\n    sys.exit('rank 1 failed on purpose')\n"
                      f"sys.exit(main(['train', '--preset', 'smoke', '--no-progress', '--out', r'{tmp_path / 'run'}']))\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in done.stderr


NAN_ON_RANK_1 = """
import sys, torch
from diffrep import distributed
from diffrep.config import make_config, preset
from diffrep.plugins import Plugin
from diffrep.train import Trainer, TrainingDiverged

class NanOnRank1(Plugin):
    name = "nan-on-rank-1"

    def loss_terms(self, batch, output, step, ema):
        return {"nan": torch.tensor(float("nan") if step >= 6 and distributed.current().rank == 1 else 0.0)}

distributed.init_from_env("cpu")
try:
    Trainer(make_config(preset("smoke"), {"steps": 10, "ckpt_every": 5, "log_every": 5}), sys.argv[1],
            plugins=[NanOnRank1()], progress=False).run()
except TrainingDiverged as e:
    print(f"rank {distributed.current().rank} stopped: {e}")
distributed.shutdown()
"""


def test_a_nan_on_one_rank_stops_every_rank_before_any_checkpoint(tmp_path):
    script = tmp_path / "nan_on_rank1.py"
    script.write_text(NAN_ON_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} stopped: loss became NaN/inf at step 7" in done.stdout
    assert latest_checkpoint(tmp_path / "run").step == 5


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from diffrep import distributed
    from diffrep.errors import DiffrepError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DiffrepError, match="--nproc-per-node 1 .*--device cpu"):
        distributed.init_from_env("auto")


def test_a_latent_cache_built_by_two_processes_equals_one_built_by_one(tmp_path, monkeypatch):
    """Rank r encodes the chunks j ≡ r (mod 2), rank 0 joins them; the latent run then trains as on one process."""
    pytest.importorskip("diffusers")
    from safetensors.torch import load_file

    from diffrep.latent.autoencoder import build_vae, save_vae_folder

    torch.manual_seed(0)
    save_vae_folder(build_vae("VAE-T", (1, 8, 8), (4, 4, 4)), tmp_path / "vae")
    args = ["train", "--space", f"vae:{tmp_path / 'vae'}", "--data", "digits", "--model", "DiT-T/2", "--hflip",
            "--batch-size", 16, "--steps", 3, "--ckpt-every", 3, "--grid-every", 0, "--precision", "fp32", "--no-progress"]
    for nproc in (1, 2):
        monkeypatch.setenv("DIFFREP_CACHE", str(tmp_path / f"cache{nproc}"))
        torchrun(nproc, *args, "--out", tmp_path / f"run{nproc}")
    tables = [load_file(str(next((tmp_path / f"cache{n}" / "latents").glob("*.safetensors")))) for n in (1, 2)]
    assert tables[0].keys() == {"mean", "std", "flip_mean", "flip_std"} == tables[1].keys()
    assert tables[0]["mean"].shape[0] == 1438            # the digits' train split: 6 chunks of 256, all joined
    for k in tables[0]:
        torch.testing.assert_close(tables[0][k], tables[1][k], atol=1e-6, rtol=1e-5)
    a, b = weights(tmp_path / "run1"), weights(tmp_path / "run2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("condition", ["clusters:k=4", "embedding:source=pixels"])
def test_two_processes_share_rank_0s_self_labels_and_embeddings(tmp_path, condition):
    """Rank 0 clusters (or gathers the embeddings), every rank trains on them: the same file and weights as one
    process."""
    args = ["train", *SMOKE, "--steps", 4, "--ckpt-every", 4, "--precision", "fp32", "--condition", condition]
    for nproc in (1, 2):
        torchrun(nproc, *args, "--out", tmp_path / f"run{nproc}")
    name = "self_labels.json" if condition.startswith("clusters") else "embeddings.safetensors"
    one, two = ((tmp_path / f"run{n}" / name).read_bytes() for n in (1, 2))
    assert one == two
    if condition.startswith("clusters"):
        assert len(set(json.loads(one)["labels"])) == 4
    a, b = weights(tmp_path / "run1"), weights(tmp_path / "run2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=3e-5, rtol=1e-4)
