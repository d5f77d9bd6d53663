"""How much FD_ref moves between equally good weights and between sampling seeds.

One run, trained with a checkpoint every 25 steps so that its raw weights are kept
(``diffrep train --preset quickstart --steps 1150 --ckpt-every 25 --keep-last 100 --grid-every 0
--out runs/exp/qs``). Each row draws 1,000 class-balanced samples (Euler 50, CFG 1.5 by default) and
judges them with the reference encoder. There are three kinds of row:

- ``ema@STEP``: the trainer's EMA at a checkpoint;
- ``power:G``: a post-hoc power-function average of the raw snapshots, weights ∝ step^G
  (Karras et al., arXiv 2312.02696). The trainer's EMA warm-up, decay (1 + k)/(10 + k), is
  about G = 8;
- ``power-a:G`` / ``power-b:G``: the same average over every other snapshot (``a`` holds the
  last one, ``b`` the rest). Each half is an equally valid estimate of the same average, so the
  spread between the halves is noise that comes from the weights.

The first row is drawn with every seed in ``--seeds``: that spread is the sampling noise for fixed
weights. The other rows are drawn with the first seed.

    python benchmarks/fd_noise.py --run runs/exp/qs --rows ema@1150,power:8,power-a:8,power-b:8 --seeds 0,1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import table, write_result

from diffrep.checkpoint import list_checkpoints, verify
from diffrep.data import ImageSet
from diffrep.distributed import gather_chunks
from diffrep.generate import cfg_guidance, generate, make_labels
from diffrep.reference import judge
from diffrep.runs import load_run


def power_average(snapshots: list[tuple[int, dict]], gamma: float, parity: int | None) -> dict[str, torch.Tensor]:
    """Σ w_s θ_s / Σ w_s with w_s = s^γ over the snapshots; with ``parity`` 0 or 1, over every other one
    (0: the last, the third last, …)."""
    n = len(snapshots)
    chosen = [(s, sd) for i, (s, sd) in enumerate(snapshots) if parity is None or (n - 1 - i) % 2 == parity]
    total = sum(s ** gamma for s, _ in chosen)
    return {k: sum((s ** gamma / total) * sd[k].double() for s, sd in chosen).float() for k in chosen[-1][1]}


def weights_for(row: str, checkpoints: dict, snapshots: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
    kind, _, value = row.partition(":")
    if kind.startswith("ema@"):
        step = int(kind[4:])
        if step not in checkpoints:
            sys.exit(f"row {row!r}: the run has no checkpoint at step {step} (it has {min(checkpoints)}…{max(checkpoints)})")
        return checkpoints[step].weights("ema")
    parity = {"power": None, "power-a": 0, "power-b": 1}.get(kind, -1)
    if parity == -1 or not value:
        sys.exit(f"unknown row {row!r}: use ema@STEP, power:G, power-a:G or power-b:G")
    return power_average(snapshots, float(value), parity)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a run trained with --ckpt-every 25 --keep-last 100")
    p.add_argument("--rows", default="ema@1150,power:8,power-a:8,power-b:8")
    p.add_argument("--seeds", default="0,1", help="sampling seeds for the first row; the others use the first")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--name", default="fd_noise")
    a = p.parse_args()
    net, process, _, info, *_ = load_run(a.run, device="cpu")
    checkpoints = {c.step: c for c in (verify(path) for path in list_checkpoints(a.run))}
    snapshots = [(step, c.weights("model")) for step, c in sorted(checkpoints.items())]
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for i, row in enumerate(a.rows.split(",")):
        net.load_state_dict(weights_for(row, checkpoints, snapshots))
        for seed in seeds if i == 0 else seeds[:1]:
            labels = make_labels("balanced", a.n, info["num_classes"], seed)
            images = gather_chunks(generate(net, process, tuple(info["image_shape"]), a.n, sampler="euler", steps=50,
                                            seed=seed, labels=labels, guidance=cfg_guidance(a.cfg, labels=labels),
                                            progress=False))
            verdict = judge(ImageSet(images, labels, info["num_classes"], row)).as_dict()
            rows.append({"weights": row, "seed": seed, **verdict})
            print(f"{row} seed {seed}: FD_ref {verdict['fd_ref']:.3f}", file=sys.stderr)
    print(table(rows, ["weights", "seed", "accuracy", "fd_ref", "fd_ratio"]))
    path = write_result(a.name, {"run": str(a.run), "snapshots": len(snapshots), "cfg": a.cfg, "sampler": "euler 50",
                                 "rows": rows, "command": "python benchmarks/fd_noise.py " + " ".join(sys.argv[1:])})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
