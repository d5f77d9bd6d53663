"""Linear and k-NN probes on mnist5k: the diffusion model's features at every (block, t) vs other backbones.

Trains on the 4,000-image train split and tests on the 1,000-image test split, one protocol for every
backbone (linear: AdamW, 50 epochs, standardised features, weight decay chosen on 10% of the train
split; k-NN: cosine, k = 20, τ = 0.07, on the raw features and after PCA whitening to the top 64
principal components of the train split).  The diffusion features are the hidden states of
the run's EMA net at each block and noise level t, averaged over an 8×8 grid of regions (``--pool``)
and over ``--noise-draws`` draws of ε per image, with the null label.

    python benchmarks/quickstart.py          # once, for the model
    python benchmarks/probes.py [--run runs/bench/quickstart]
    python benchmarks/probes.py --run runs/bench/quality-dit-tiny --name probes-dit-tiny
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import table, write_result
from diffrep.represent.probes import plot_heatmap, probe_backbones

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/bench/quickstart"))
    ap.add_argument("--t", default="0.02,0.05,0.1,0.2,0.4,0.7")
    ap.add_argument("--backbones", default="diffusion,reference,pixels")
    ap.add_argument("--pool", default="grid8")
    ap.add_argument("--noise-draws", type=int, default=4)
    ap.add_argument("--name", default="probes", help="result name: results/<name>.json and .png")
    args = ap.parse_args()
    start = time.perf_counter()
    rows = probe_backbones(args.run, backbones=args.backbones.split(","), times=[float(t) for t in args.t.split(",")],
                           pooling=args.pool, noise_draws=args.noise_draws, progress=False)
    seconds = time.perf_counter() - start
    best = {}
    for r in rows:
        for probe in ("linear", "knn", "knn_white"):
            key = (r["backbone"], probe)
            if key not in best or r[probe] > best[key][probe]:
                best[key] = r
    summary = [{"backbone": b, "probe": p, "accuracy": r[p], "block": r["block"], "t": r["t"], "dim": r["dim"]}
               for (b, p), r in best.items()]
    print(table(summary, ["backbone", "probe", "accuracy", "block", "t", "dim"]))
    plot_heatmap(rows, RESULTS / f"{args.name}.png")
    path = write_result(args.name, {"run": str(args.run), "seconds": seconds, "best": summary, "rows": rows,
                                   "pool": args.pool, "noise_draws": args.noise_draws,
                                   "command": f"python benchmarks/probes.py --run {args.run} --t {args.t} --pool {args.pool} "
                                              f"--noise-draws {args.noise_draws} --name {args.name}"})
    print(f"{seconds:.0f}s → {path}, {RESULTS / args.name}.png")


if __name__ == "__main__":
    main()
