"""The zero-shot Diffusion Classifier on the mnist5k test split: accuracy vs network calls per image.

One class-conditional run (default: the quickstart model of ``benchmarks/quickstart.py``), ``--n``
class-balanced test images, ``--pairs`` (t, ε) pairs per image on an even t grid.  Every schedule is
run on the same pairs (errors are computed once and shared; each schedule is charged the calls it
asks for):

- exhaustive on even sub-grids of the pairs (every 8th, 4th, 2nd, all): the accuracy-vs-calls curve;
- the paper's adaptive schedule scaled to ``P`` pairs: 10% of the pairs for every class, keep 5,
  then all pairs for 1 (its CIFAR-10 setting is 50 of 500, keep 5);
- diffrep's racing schedule, pairs ordered by timestep informativeness fitted on 100 labelled train
  images (the default of ``diffrep classify --schedule racing``), and its variants (z, weights, order).

Throughput: the racing schedule is timed on its own (fresh errors); the exhaustive schedule's
images/s comes from the measured time per network call.  "Where the time goes" splits the
racing run into the network's forward passes and everything else.

    python benchmarks/quickstart.py            # once, for the model
    python benchmarks/classify.py [--n 500] [--pairs 32]
    python benchmarks/classify.py --run runs/bench/quality-dit-tiny-4800 --n 1000 --name classify-dit-tiny
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import figure, table, write_result
from diffrep.represent.diffusion_classifier import PairErrors, classify, fit_temperature, fit_time_weights, probabilities
from diffrep.data import balanced_subset, load_builtin
from diffrep.runs import load_run

RESULTS = Path(__file__).parent / "results"


class ForwardTimer:
    """Accumulates the wall time spent inside a module's forward passes."""

    def __init__(self, module: torch.nn.Module):
        self.seconds, self._start = 0.0, 0.0
        module.register_forward_pre_hook(lambda *a: setattr(self, "_start", time.perf_counter()))
        module.register_forward_hook(lambda *a: setattr(self, "seconds", self.seconds + time.perf_counter()
                                                        - self._start))


def accuracy(result, labels: torch.Tensor) -> float:
    return float((result.predictions == labels).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/bench/quickstart"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--fit-images", type=int, default=100)
    ap.add_argument("--name", default="classify", help="result name: results/<name>.json and .png")
    args = ap.parse_args()
    net, process, cfg, info, *_ = load_run(args.run, "ema", "cpu")
    timer = ForwardTimer(net)
    classes, pairs = info["num_classes"], args.pairs
    test = load_builtin("mnist5k", "test")
    test = test.subset(balanced_subset(test.labels, args.n))
    fit = load_builtin("mnist5k", "train")
    fit = fit.subset(balanced_subset(fit.labels, args.fit_images))

    pe_fit = PairErrors(net, process, fit.images, classes, pairs=pairs, seed=1)
    weights = fit_time_weights(pe_fit, fit.labels)
    order = weights.argsort(descending=True)

    pe = PairErrors(net, process, test.images, classes, pairs=pairs)
    timer.seconds = 0.0
    start = time.perf_counter()
    racing = classify(pe, schedule="racing", order=order, round_size=2, z=3.0)     # `diffrep classify` default
    racing_s, racing_forward_s = time.perf_counter() - start, timer.seconds
    computed_before = int((~pe.errors.isnan()).sum())
    rows = [{"schedule": "racing z=3 (fitted order; the default)", "calls": float(racing.calls.float().mean()),
             "accuracy": accuracy(racing, test.labels)}]

    pe.new_schedule()
    start = time.perf_counter()
    exhaustive = classify(pe, schedule="exhaustive")
    fill_s = time.perf_counter() - start
    seconds_per_call = fill_s / (pe.errors.numel() - computed_before)
    for step in (8, 4, 2):
        sub = torch.arange(0, pairs, step)
        pred = pe.errors[:, :, sub].mean(-1).argmin(1)
        rows.append({"schedule": f"exhaustive, {len(sub)} pairs", "calls": len(sub) * classes,
                     "accuracy": float((pred == test.labels).float().mean())})
    rows.append({"schedule": f"exhaustive, {pairs} pairs", "calls": float(exhaustive.calls.float().mean()),
                 "accuracy": accuracy(exhaustive, test.labels)})
    weighted = classify(pe, schedule="exhaustive", weights=weights)
    rows.append({"schedule": f"exhaustive, {pairs} pairs, fitted weights", "calls": pairs * classes,
                 "accuracy": accuracy(weighted, test.labels)})
    variants = [("adaptive (paper, scaled)", "adaptive", {}),
                ("adaptive, fitted order", "adaptive", {"order": order}),
                ("racing z=3, fitted order and weights", "racing", {"order": order, "weights": weights, "z": 3.0}),
                ("racing z=3, spread order", "racing", {"z": 3.0}),
                ("racing z=4, fitted order", "racing", {"order": order, "z": 4.0}),
                ("racing z=5, fitted order", "racing", {"order": order, "z": 5.0})]
    for name, schedule, kw in variants:
        pe.new_schedule()
        result = classify(pe, schedule=schedule, rounds=[(max(1, pairs // 10), 5), (pairs, 1)], **kw)
        rows.append({"schedule": name, "calls": float(result.calls.float().mean()),
                     "accuracy": accuracy(result, test.labels)})

    tau = fit_temperature(pe_fit.errors.mean(-1), fit.labels)
    p_true = probabilities(exhaustive.scores, tau)[torch.arange(len(test.labels)), test.labels]
    full = rows[4]
    for r in rows:
        r["calls_vs_exhaustive"] = r["calls"] / full["calls"]
        r["accuracy_gap_points"] = 100 * (full["accuracy"] - r["accuracy"])
    speed = {"racing_images_per_s": args.n / racing_s, "racing_forward_fraction": racing_forward_s / racing_s,
             "seconds_per_network_call": seconds_per_call,
             "exhaustive_images_per_s_estimated": 1 / (seconds_per_call * pairs * classes)}
    print(table(rows, ["schedule", "calls", "accuracy", "calls_vs_exhaustive", "accuracy_gap_points"]))
    print(f"racing: {speed['racing_images_per_s']:.2f} images/s, {100 * speed['racing_forward_fraction']:.0f}% of "
          f"the time in the network; exhaustive ≈ {speed['exhaustive_images_per_s_estimated']:.2f} images/s "
          f"({1e3 * seconds_per_call:.2f} ms per call); temperature {tau:.3g}, mean p(true) {float(p_true.mean()):.3f}")
    plot(rows, RESULTS / f"{args.name}.png")
    path = write_result(args.name, {"run": str(args.run), "n": args.n, "pairs": pairs, "rows": rows, **speed,
                                     "time_weights": weights.tolist(), "temperature": tau,
                                     "mean_p_true": float(p_true.mean()),
                                     "command": f"python benchmarks/classify.py --run {args.run} --n {args.n} "
                                                f"--pairs {pairs} --name {args.name}"})
    print(f"→ {path}, {RESULTS / args.name}.png")


def plot(rows: list[dict], png: Path) -> None:
    curve = [r for r in rows if r["schedule"].startswith("exhaustive") and "weights" not in r["schedule"]]
    with figure(png) as ax:
        ax.plot([r["calls"] for r in curve], [100 * r["accuracy"] for r in curve], "o-", label="exhaustive")
        for r in rows:
            if r not in curve:
                ax.plot(r["calls"], 100 * r["accuracy"], "s", label=r["schedule"])
        ax.set_xscale("log")
        ax.set_xlabel("network calls per image")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)


if __name__ == "__main__":
    main()
