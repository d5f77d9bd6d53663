"""Training throughput and model FLOP utilisation (MFU) per speed option, on this machine.

MFU = achieved model FLOPs per second ÷ the bf16 matmul peak measured in the same run
(a 2048² ``torch.mm``, best of several tries before and after the rows).  Model FLOPs are counted by
``torch.utils.flop_counter`` for one forward + backward of the net (the optimiser, EMA and data work
count as overhead, as in the papers' MFU; activation checkpointing's recomputation too).  Each row
times whole trainer steps (data drawing, forward, backward, clipping, AdamW, EMA) after warm-up
steps (which include compiling, for ``compile``).  Rows: the defaults (bf16 autocast, foreach
AdamW, eager), then one option changed at a time.

    python benchmarks/throughput.py
    python benchmarks/throughput.py --models DiT-S/4 --variants default,compile --steps 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from _common import table, write_result
from torch.utils.flop_counter import FlopCounterMode

from diffrep.config import make_config, preset
from diffrep.trainer import Trainer

ROWS = {"quickstart": ("quickstart", {}), "dit-tiny": ("dit-tiny", {}), "DiT-S/4": ("dit-s4", {})}
VARIANTS = {
    "default": {},
    "fp32": {"precision": "fp32"},
    "adamw-fused": {"adamw_impl": "fused"},
    "adamw-for-loop": {"adamw_impl": "for-loop"},
    "compile": {"compile": True},
    "grad-checkpoint": {"grad_checkpoint": True},
    "channels-last": {"channels_last": True},
}


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Best-of-3 FLOP/s of an ``n×n`` matmul in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def model_flops_per_image(trainer: Trainer) -> float:
    """Forward + backward FLOPs of the net for one image (in eval mode: activation checkpointing's
    recomputation is overhead, not model FLOPs)."""
    net = trainer.net.eval()
    x = torch.randn(1, *trainer.data.shape)
    cond = torch.zeros(1, dtype=torch.long) if trainer.num_classes else None
    with FlopCounterMode(display=False) as counter:
        out, _ = net(x, torch.ones(1), cond)
        out.sum().backward()
    net.zero_grad(set_to_none=True)
    net.train()
    return counter.get_total_flops()


def measure(preset_name: str, variant: str, batch_size: int, steps: int, warmup: int) -> dict:
    cfg = make_config(preset(preset_name), {"batch_size": batch_size, "warmup": 10, **VARIANTS[variant]})
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, progress=False)
        flops = model_flops_per_image(trainer)
        for s in range(warmup):
            trainer.train_step(s)
        start = time.perf_counter()
        for s in range(warmup, warmup + steps):
            loss = trainer.train_step(s)
        float(loss)
        seconds = (time.perf_counter() - start) / steps
    params = sum(p.numel() for p in trainer.net.parameters() if p.requires_grad)
    compiled = getattr(trainer.forward_net, "failed", None)
    return {"model": cfg.model, "params_M": round(params / 1e6, 2), "variant": variant, "precision": cfg.precision,
            "batch": batch_size, "ms_per_step": round(1000 * seconds, 1), "img_per_s": round(batch_size / seconds, 1),
            "gflop_per_img": round(flops / 1e9, 3), "achieved_gflop_s": round(flops * batch_size / seconds / 1e9, 1),
            **({"compile_fell_back": compiled} if compiled is not None else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--name", default="throughput")
    a = p.parse_args()
    peak = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    rows = []
    for name in a.models.split(","):
        for variant in a.variants.split(","):
            if variant == "channels-last" and not name == "quickstart":
                continue        # a U-Net option
            row = measure(ROWS[name][0], variant, a.batch_size, a.steps, a.warmup)
            rows.append(row)
            print(f"{row['model']} {variant}: {row['img_per_s']} img/s, {row['achieved_gflop_s']} GFLOP/s", file=sys.stderr)
    # measured again after the rows: the larger of the two is the peak (robust to a busy moment)
    peak = {"bf16": max(peak["bf16"], matmul_peak(torch.bfloat16)), "fp32": max(peak["fp32"], matmul_peak(torch.float32))}
    for row in rows:
        row["mfu_vs_bf16_peak"] = round(row["achieved_gflop_s"] * 1e9 / peak["bf16"], 3)
        row["mfu_vs_own_peak"] = round(row["achieved_gflop_s"] * 1e9 / peak[row["precision"]], 3)
    print(f"matmul peak (2048², this run): bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s")
    print(table(rows, ["model", "params_M", "variant", "batch", "ms_per_step", "img_per_s", "gflop_per_img",
                       "achieved_gflop_s", "mfu_vs_bf16_peak", "mfu_vs_own_peak"]))
    path = write_result(a.name, {"matmul_peak_gflop_s": {k: round(v / 1e9, 1) for k, v in peak.items()}, "rows": rows,
                                 "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
