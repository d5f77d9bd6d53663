"""diffrep's nets beside the official DiT and diffusers' models of the same size, timed side by side.

One process, interleaved rounds (the order of the models alternates ABC…CBA), ≥ 5 rounds, the load average recorded
before each: a training step (bf16 autocast, AdamW, clipping at 1, the same loop for every model) and a sampling
forward (``inference_mode``, bf16 autocast, batch 250), eager and compiled. Ratios are diffrep ÷ peer in images/s,
per round (median and min–max). MFU = the model's FLOPs (``torch.utils.flop_counter``) × images/s ÷ the bf16 matmul
peak measured in the same run. The full ``generate`` path (1,000 images, Euler 50, diffrep's DiT-S/4) is compared
with 50 × its own forward time.

- official DiT: ``models.py`` of facebookresearch/DiT (a local checkout; it needs timm), ``DiT_S_4``, no learned σ;
- diffusers: ``DiTTransformer2DModel`` (6 heads × 64, 12 layers, patch 4, adaLN-Zero) and ``UNet2DModel`` with
  UNet-S's widths (32, 64, 64), one residual block per level, scale-shift time modulation, attention in the middle.

Timm and diffusers need torchvision beside torch; run it in the peers' environment (benchmarks/parity_eval.py):

    /work/peers/venv/bin/pip install diffusers==0.42.1 timm==1.0.31
    git clone https://github.com/facebookresearch/DiT /work/peers/DiT
    PYTHONPATH=src /work/peers/venv/bin/python benchmarks/peers.py --dit /work/peers/DiT [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from _common import matmul_peak, table, write_result
from diffrep.nets import build_net

SIZE, CHANNELS, CLASSES = 32, 1, 10


def models(dit_repo: Path) -> dict[str, tuple[torch.nn.Module, callable]]:
    """name → (module, forward(x, t, y) → output tensor)."""
    from diffusers import DiTTransformer2DModel, UNet2DModel

    sys.path.insert(0, str(dit_repo))
    from models import DiT_S_4

    torch.manual_seed(0)
    ours_dit = build_net("DiT-S/4", SIZE, CHANNELS, CLASSES)
    official = DiT_S_4(input_size=SIZE, in_channels=CHANNELS, num_classes=CLASSES, learn_sigma=False)
    hf_dit = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=CHANNELS,
                                   out_channels=CHANNELS, num_layers=12, sample_size=SIZE, patch_size=4,
                                   num_embeds_ada_norm=CLASSES, norm_type="ada_norm_zero")
    ours_unet = build_net("UNet-S", SIZE, CHANNELS, CLASSES)
    hf_unet = UNet2DModel(sample_size=SIZE, in_channels=CHANNELS, out_channels=CHANNELS, block_out_channels=(32, 64, 64),
                          layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                          norm_num_groups=8, num_class_embeds=CLASSES, resnet_time_scale_shift="scale_shift")
    return {
        "diffrep DiT-S/4": (ours_dit, lambda m, x, t, y: m(x, t, y)[0]),
        "official DiT-S/4": (official, lambda m, x, t, y: m(x, t, y)),
        "diffusers DiT-S/4": (hf_dit, lambda m, x, t, y: m(x, timestep=t, class_labels=y).sample),
        "diffrep UNet-S": (ours_unet, lambda m, x, t, y: m(x, t, y)[0]),
        "diffusers UNet-S": (hf_unet, lambda m, x, t, y: m(x, t, class_labels=y).sample),
    }


def inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, CHANNELS, SIZE, SIZE, generator=g), torch.rand(batch, generator=g) * 999,
            torch.randint(0, CLASSES, (batch,), generator=g))


def flops(module, forward, batch: int, train: bool) -> float:
    x, t, y = inputs(batch)
    with FlopCounterMode(display=False) as counter, torch.autocast("cpu", torch.bfloat16):
        out = forward(module, x, t, y)
        if train:
            out.float().square().mean().backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


class TrainStep:
    """The same loop for every model: bf16 autocast, MSE, backward, clip at 1, AdamW."""

    def __init__(self, module, forward, batch: int):
        self.module, self.forward = module.train(), forward
        self.opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
        self.x, self.t, self.y = inputs(batch)
        self.target = torch.randn_like(self.x)

    def __call__(self) -> None:
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.mse_loss(self.forward(self.module, self.x, self.t, self.y).float(), self.target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class SampleForward:
    def __init__(self, module, forward, batch: int, compiled: bool = False):
        self.module, self.forward = module.eval(), forward
        self.call = torch.compile(module) if compiled else module
        self.x, self.t, self.y = inputs(batch)

    def __call__(self) -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            self.forward(self.call, self.x, self.t, self.y)


def seconds_per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def full_sampling(net, n: int, batch: int) -> float:
    """Images/s of diffrep's ``generate`` (Euler 50, chunks of ``batch``, bf16, uint8 out)."""
    from diffrep.generate import generate
    from diffrep.processes import make_process

    start = time.perf_counter()
    generate(net.eval(), make_process("flow"), (CHANNELS, SIZE, SIZE), n, sampler="euler", steps=50,
             labels=torch.arange(n) % CLASSES, batch_size=batch, progress=False)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dit", type=Path, required=True, help="a checkout of facebookresearch/DiT")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--sample-batch", type=int, default=250)
    p.add_argument("--calls", type=int, default=3, help="timed calls per (model, kind, round)")
    p.add_argument("--full-n", type=int, default=1000, help="images for the full generate row (0: skip)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--name", default="peers")
    a = p.parse_args()
    nets = models(a.dit)
    peak = matmul_peak(torch.bfloat16, torch.device("cpu"))
    work = {}
    for name, (module, forward) in nets.items():
        params = sum(q.numel() for q in module.parameters())
        work[(name, "train")] = (TrainStep(module, forward, a.train_batch), a.train_batch,
                                 flops(module, forward, 2, True), params)
        work[(name, "sample")] = (SampleForward(module, forward, a.sample_batch), a.sample_batch,
                                  flops(module, forward, 2, False), params)
    compile_seconds = {}
    if not a.no_compile:
        for name in [n for n in nets if "DiT" in n]:
            fn = SampleForward(*nets[name], a.sample_batch, compiled=True)
            start = time.perf_counter()
            fn()
            compile_seconds[name] = time.perf_counter() - start
            work[(name, "sample compiled")] = (fn, a.sample_batch, work[(name, "sample")][2], work[(name, "sample")][3])
    for fn, *_ in work.values():
        fn()                                               # warm-up: allocator, kernels, optimiser state
    times: dict[tuple, list[float]] = {key: [] for key in work}
    loads = []
    for r in range(a.rounds):
        loads.append(os.getloadavg()[0])
        keys = list(work) if r % 2 == 0 else list(reversed(work))
        for key in keys:
            times[key].append(seconds_per_call(work[key][0], a.calls))
        print(f"round {r + 1}/{a.rounds} (load {loads[-1]:.2f})", file=sys.stderr, flush=True)
    rows = []
    for (name, kind), (fn, batch, fl, params) in work.items():
        secs = statistics.median(times[(name, kind)])
        row = {"model": name, "kind": kind, "params_M": round(params / 1e6, 2), "batch": batch,
               "ms_per_call": round(1e3 * secs, 1), "img_per_s": round(batch / secs, 1),
               "gflop_per_img": round(fl / 1e9, 3), "mfu_bf16": round(fl * batch / secs / peak, 3)}
        if kind == "sample compiled":
            row["compile_s"] = round(compile_seconds[name], 1)
        family = name.split()[1]
        if not name.startswith("diffrep"):
            ours = times[(f"diffrep {family}", kind)]
            ratios = [theirs / mine for mine, theirs in zip(ours, times[(name, kind)])]
            row.update(ratio_median=round(statistics.median(ratios), 3), ratio_min=round(min(ratios), 3),
                       ratio_max=round(max(ratios), 3))
        rows.append(row)
    compile_pays = {}
    for name, secs in compile_seconds.items():
        eager, compiled = (statistics.median(times[(name, k)]) for k in ("sample", "sample compiled"))
        for n in (1000, 50000):
            forwards = -(-n // a.sample_batch) * 50
            compile_pays[f"{name} n={n}"] = {"eager_s": round(forwards * eager, 1),
                                             "compiled_s": round(secs + forwards * compiled, 1)}
    sweep = {}
    for batch in (64, 128, 250, 500):
        fn = SampleForward(*nets["diffrep DiT-S/4"], batch)
        fn()
        sweep[batch] = round(batch / min(seconds_per_call(fn, a.calls) for _ in range(2)), 1)
    full = {}
    if a.full_n:
        ips = full_sampling(nets["diffrep DiT-S/4"][0], a.full_n, a.sample_batch)
        forward_s = statistics.median(times[("diffrep DiT-S/4", "sample")])
        bound = a.sample_batch / (50 * forward_s)
        full = {"n": a.full_n, "img_per_s": round(ips, 2), "bound_img_per_s": round(bound, 2),
                "fraction_of_bound": round(ips / bound, 3)}
    print(table(rows, ["model", "kind", "params_M", "batch", "ms_per_call", "img_per_s", "gflop_per_img", "mfu_bf16",
                       "ratio_median", "ratio_min", "ratio_max", "compile_s"]))
    print("compile (Euler 50):", compile_pays)
    print("diffrep DiT-S/4 sampling forward img/s by batch:", sweep)
    if full:
        print(f"full generate: {full['img_per_s']} img/s = {full['fraction_of_bound']:.1%} of 1/(50 × forward)")
    path = write_result(a.name, {"command": "python " + " ".join(sys.argv), "bf16_peak_gflop_s": round(peak / 1e9, 1),
                                 "rounds": a.rounds, "load_average": loads, "rows": rows, "full_generate": full,
                                 "compile_vs_eager_euler50": compile_pays, "sample_img_per_s_by_batch": sweep,
                                 "note": "ratio = peer seconds ÷ diffrep seconds per round (> 1: diffrep faster)"})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
