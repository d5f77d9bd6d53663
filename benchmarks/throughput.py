"""Training throughput and model FLOP utilisation (MFU) per speed option, on this machine's CPU or GPU.

MFU = achieved model FLOPs per second ÷ the bf16 matmul peak measured in the same run
(the best ``torch.mm`` rate over square and transformer-shaped matmuls on the CPU, 8192² on a GPU,
measured before and after the rows: ``_common.PEAK_SHAPES``).  Model FLOPs are counted by
``torch.utils.flop_counter`` for one forward + backward of the net (the optimiser, EMA and data work
count as overhead, as in the papers' MFU; activation checkpointing's recomputation too).  Each row
times whole trainer steps (data drawing, forward, backward, clipping, AdamW, EMA) after warm-up
steps (which include compiling, for ``compile``).  Rows: the defaults (precision auto, foreach
AdamW, eager), then one option changed at a time.  ``DiT-B/2`` trains on random 4×32×32 "latents"
with 1,000 classes: the shape of DiT's ImageNet-256 setting (256 tokens per image).  On a GPU each
row also checks that a timed step makes no host–device synchronisation (``host_syncs``: the number
of synchronising calls PyTorch's sync debug mode reports in one step).

    python benchmarks/throughput.py
    python benchmarks/throughput.py --models DiT-S/4 --variants default,compile --steps 5
    python benchmarks/throughput.py --device cuda --models DiT-B/2 --batch-size 256 --variants default,compile
    python benchmarks/throughput.py --models DiT-S/4 --variants compile --profile   # where a step's time goes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import torch
from _common import matmul_peak, synchronize, table, write_result
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from diffrep.config import make_config, preset
from diffrep.train import Trainer

ROWS = {"quickstart": ("quickstart", {}), "quickstart-small": ("quickstart", {"model": "UNet-XS"}),
        "dit-tiny": ("dit-tiny", {}), "DiT-S/4": ("dit-s4", {}),
        "DiT-B/2": ("dit-s4", {"model": "DiT-B/2", "lr": 1e-4})}
LATENT_ROWS = {"DiT-B/2"}
"""Rows trained on random 4×32×32 latents with 1,000 classes instead of mnist5k."""
VARIANTS = {
    "default": {},                      # precision auto: bf16 where the device computes it natively, else fp32
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "adamw-fused": {"adamw_impl": "fused"},
    "adamw-for-loop": {"adamw_impl": "for-loop"},
    "compile": {"compile": True},
    "compile-deterministic": {"compile": True, "deterministic": True},
    "grad-checkpoint": {"grad_checkpoint": True},
    "channels-last": {"channels_last": True},
}


def latent_dataset(folder: Path, n: int = 2048) -> Path:
    """An ``.npz`` of ``n`` random 4×32×32 uint8 "latents" with labels 0…999."""
    rng = np.random.default_rng(0)
    path = folder / "latents.npz"
    np.savez(path, arr_0=rng.integers(0, 256, (n, 32, 32, 4), dtype=np.uint8), arr_1=np.arange(n) % 1000)
    return path


def host_syncs(trainer: Trainer, step: int) -> int:
    """Synchronising calls (``.item()``, blocking copies, …) PyTorch reports during one CUDA step."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_step(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def model_flops_per_image(trainer: Trainer) -> float:
    """Forward + backward FLOPs of the net for one image (in eval mode: activation checkpointing's
    recomputation is overhead, not model FLOPs)."""
    net = trainer.net.eval()
    x = torch.randn(1, *trainer.data.shape, device=trainer.device)
    cond = torch.zeros(1, dtype=torch.long, device=trainer.device) if trainer.num_classes else None
    with FlopCounterMode(display=False) as counter:
        out, _ = net(x, torch.ones(1, device=trainer.device), cond)
        out.sum().backward()
    net.zero_grad(set_to_none=True)
    net.train()
    return counter.get_total_flops()


def profile_step(trainer: Trainer, step: int, top: int = 8) -> list[dict]:
    """The ops with the most self time (device time on a GPU) in one trainer step, by ``torch.profiler``.
    Under ``compile``, Inductor's fused kernels show up as ``CompiledFxGraph`` calls."""
    cuda = trainer.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        trainer.train_step(step)
        synchronize(trainer.device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in ops)
    return [{"op": e.key[:50], "ms": round(getattr(e, key) / 1000, 1), "share": round(getattr(e, key) / total, 3)}
            for e in ops[:top]]


def measure(name: str, variant: str, batch_size: int, steps: int, warmup: int, device: torch.device,
            with_profile: bool = False) -> dict:
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:                # a --deterministic row sets the process-wide flag: restored for the next row
        return measure_row(name, variant, batch_size, steps, warmup, device, with_profile)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def measure_row(name: str, variant: str, batch_size: int, steps: int, warmup: int, device: torch.device,
                with_profile: bool) -> dict:
    preset_name, overrides = ROWS[name]
    with tempfile.TemporaryDirectory() as out:
        data = {"data": str(latent_dataset(Path(out)))} if name in LATENT_ROWS else {}
        cfg = make_config(preset(preset_name), overrides, data, {"batch_size": batch_size, "warmup": 10, **VARIANTS[variant]})
        trainer = Trainer(cfg, Path(out) / "run", device=str(device), progress=False)
        flops = model_flops_per_image(trainer)
        for s in range(warmup):
            trainer.train_step(s)
        syncs = host_syncs(trainer, warmup) if device.type == "cuda" else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        for s in range(warmup + 1, warmup + 1 + steps):
            loss = trainer.train_step(s)
        float(loss)
        seconds = (time.perf_counter() - start) / steps
        ops = profile_step(trainer, warmup + 1 + steps) if with_profile else None
    params = sum(p.numel() for p in trainer.net.parameters() if p.requires_grad)
    compiled = getattr(trainer.forward_net, "failed", None)
    return {"model": cfg.model, "params_M": round(params / 1e6, 2), "variant": variant,
            "precision": trainer.cfg.precision,
            "batch": batch_size, "ms_per_step": round(1000 * seconds, 1), "img_per_s": round(batch_size / seconds, 1),
            "gflop_per_img": round(flops / 1e9, 3), "achieved_gflop_s": round(flops * batch_size / seconds / 1e9, 1),
            **({"host_syncs": syncs, "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1)}
               if device.type == "cuda" else {}),
            **({"compile_fell_back": compiled} if compiled is not None else {}),
            **({"profile": ops} if ops else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma-separated, from {', '.join(ROWS)} (default: all; on a CPU all but "
                                    f"{', '.join(LATENT_ROWS)}, whose activations outgrow 24 GiB at batch 128)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--profile", action="store_true", help="also profile one step per row: the ops that took the most time")
    p.add_argument("--name", default=None, help="result name (default: throughput, or throughput_cuda on a GPU)")
    a = p.parse_args()
    device = torch.device(a.device)
    models = a.models or ",".join(m for m in ROWS if device.type != "cpu" or m not in LATENT_ROWS)
    peak = {"bf16": matmul_peak(torch.bfloat16, device), "fp32": matmul_peak(torch.float32, device)}
    rows = []
    for name in models.split(","):
        for variant in a.variants.split(","):
            if variant == "channels-last" and not name.startswith("quickstart"):
                continue        # a U-Net option
            row = measure(name, variant, a.batch_size, a.steps, a.warmup, device, a.profile)
            rows.append(row)
            print(f"{row['model']} {variant}: {row['img_per_s']} img/s, {row['achieved_gflop_s']} GFLOP/s", file=sys.stderr)
            if a.profile:
                print(table(row["profile"], ["op", "ms", "share"]))
    # measured again after the rows: the larger of the two is the peak (robust to a busy moment)
    peak = {k: max(v, matmul_peak(torch.bfloat16 if k == "bf16" else torch.float32, device)) for k, v in peak.items()}
    for row in rows:
        row["mfu_vs_bf16_peak"] = round(row["achieved_gflop_s"] * 1e9 / peak["bf16"], 3)
        row["mfu_vs_own_peak"] = round(row["achieved_gflop_s"] * 1e9 / peak[row["precision"]], 3)
    print(f"matmul peak ({a.device}, this run): bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s")
    print(table(rows, ["model", "params_M", "variant", "batch", "ms_per_step", "img_per_s", "gflop_per_img",
                       "achieved_gflop_s", "mfu_vs_bf16_peak", "mfu_vs_own_peak"]
                + (["host_syncs", "peak_mem_gib"] if device.type == "cuda" else [])))
    path = write_result(a.name or ("throughput" if device.type == "cpu" else f"throughput_{device.type}"), {"matmul_peak_gflop_s": {k: round(v / 1e9, 1) for k, v in peak.items()}, "rows": rows,
                                 "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
