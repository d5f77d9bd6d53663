"""FID-sampling throughput: images per second at 50 Euler steps, with and without CFG and compile.

Times :func:`diffrep.generate.generate` (the code behind ``diffrep sample``: chunked, seeded
per chunk, bf16 autocast, uint8 output copied back to the host) on randomly initialised nets
(speed does not depend on the weights).  ``DiT-B/2`` samples 4×32×32 latents with 1,000
classes, the shape of DiT's ImageNet-256 setting (the VAE decoder is not counted); the
others sample mnist5k-shaped 1×32×32 images with 10 classes.  CFG runs the conditional and
unconditional branches in one forward of twice the batch at every step.  MFU = the net's
forward FLOPs × evaluations ÷ time ÷ the bf16 matmul peak measured in the same run.

    python benchmarks/sampling_speed.py --models UNet-S,DiT-S/4 --batch-size 250 --chunks 2
    python benchmarks/sampling_speed.py --device cuda --models DiT-B/2 --batch-size 256 --chunks 4
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import matmul_peak, synchronize, table, write_result
from torch.utils.flop_counter import FlopCounterMode

from diffrep.generate import cfg_guidance, generate
from diffrep.nets import build_net
from diffrep.processes import make_process

MODELS = {"DiT-B/2": (4, 1000), "DiT-S/4": (1, 10), "UNet-S": (1, 10)}
"""Model → (channels, classes) of the 32×32 images it samples."""


def forward_flops_per_image(net: torch.nn.Module, channels: int, device: torch.device) -> float:
    x = torch.randn(1, channels, 32, 32, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.ones(1, device=device), torch.zeros(1, dtype=torch.long, device=device))
    return counter.get_total_flops()


def measure(model: str, compile_net: bool, cfg_scale: float, batch_size: int, chunks: int, steps: int,
            device: torch.device) -> dict:
    channels, classes = MODELS[model]
    torch.manual_seed(0)
    net = build_net(model, image_size=32, in_channels=channels, num_classes=classes).to(device).eval()
    flops = forward_flops_per_image(net, channels, device)
    runner = torch.compile(net) if compile_net else net
    process = make_process("flow")
    n = batch_size * chunks
    labels = torch.arange(n) % classes
    kwargs = dict(steps=steps, labels=labels, guidance=cfg_guidance(cfg_scale, labels=labels), batch_size=batch_size,
                  progress=False)
    generate(runner, process, (channels, 32, 32), batch_size, **kwargs)         # warm-up (and compiling)
    synchronize(device)
    start = time.perf_counter()
    generate(runner, process, (channels, 32, 32), n, seed=1, **kwargs)
    seconds = time.perf_counter() - start                                       # generate returns host tensors
    evaluations = n * steps * (2 if cfg_scale != 1.0 else 1)
    return {"model": model, "compile": compile_net, "cfg": cfg_scale, "batch": batch_size, "images": n, "steps": steps,
            "seconds": round(seconds, 2), "img_per_s": round(n / seconds, 1), "gflop_per_eval": round(flops / 1e9, 3),
            "achieved_gflop_s": round(flops * evaluations / seconds / 1e9, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="UNet-S,DiT-S/4", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--chunks", type=int, default=2, help="timed chunks of --batch-size images, after one warm-up chunk")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", default="1.0,1.5", help="comma-separated guidance scales")
    p.add_argument("--compile", default="off,on", help="off, on or off,on")
    p.add_argument("--name", default=None, help="result name (default: sampling_speed[_cuda])")
    a = p.parse_args()
    device = torch.device(a.device)
    peak = matmul_peak(torch.bfloat16, device)
    rows = []
    for model in a.models.split(","):
        for compile_net in [c == "on" for c in a.compile.split(",")]:
            for cfg_scale in [float(c) for c in a.cfg.split(",")]:
                row = measure(model, compile_net, cfg_scale, a.batch_size, a.chunks, a.steps, device)
                rows.append(row)
                print(f"{model} compile={compile_net} cfg={cfg_scale}: {row['img_per_s']} img/s", file=sys.stderr)
    peak = max(peak, matmul_peak(torch.bfloat16, device))
    for row in rows:
        row["mfu_vs_bf16_peak"] = round(row["achieved_gflop_s"] * 1e9 / peak, 3)
    print(f"bf16 matmul peak ({a.device}, this run): {peak / 1e9:.0f} GFLOP/s")
    print(table(rows, ["model", "compile", "cfg", "batch", "images", "steps", "seconds", "img_per_s", "gflop_per_eval",
                       "achieved_gflop_s", "mfu_vs_bf16_peak"]))
    path = write_result(a.name or ("sampling_speed" if device.type == "cpu" else f"sampling_speed_{device.type}"),
                        {"matmul_peak_bf16_gflop_s": round(peak / 1e9, 1), "rows": rows,
                         "command": "python " + " ".join(sys.argv)})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
