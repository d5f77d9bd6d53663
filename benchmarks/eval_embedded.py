"""Every metric on the embedded data: do they order real data, model samples and noise as a person would?

Generated sets (1,000 images each) against the 1,000-image mnist5k test split, with the 4,000-image
train split as the training set for authpct and C_T:

- ``train``: 1,000 class-balanced train images (real data; the training set itself, so the
  memorisation metrics rightly call it a copy);
- ``quickstart`` / ``quickstart+cfg``: the quickstart model's samples (``benchmarks/quickstart.py``);
- ``noise``: uniform noise images.

Encoders: ``reference`` (diffrep's mnist5k CNN) and ``pixels``.

    python benchmarks/quickstart.py      # once, for the samples
    python benchmarks/eval_embedded.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import table, write_result
from diffrep.data import balanced_subset, load_builtin
from diffrep.evaluation import METRICS, EvalSet, evaluate, load_encoders, load_eval_set

LOWER_IS_BETTER = ("fd", "fd_inf", "kid", "swd")
HIGHER_IS_BETTER = ("is", "precision", "recall", "density", "coverage")


def generated_sets(run: Path) -> dict[str, EvalSet]:
    train = load_builtin("mnist5k", "train")
    noise = torch.randint(0, 256, (1000, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    sets = {"train": EvalSet("mnist5k:train (1,000 balanced)", train.images[balanced_subset(train.labels, 1000)])}
    for name, file in (("quickstart", "samples_nocfg.npz"), ("quickstart+cfg", "samples_cfg.npz")):
        if (run / file).is_file():
            sets[name] = load_eval_set(str(run / file))
    sets["noise"] = EvalSet("uniform noise", noise)
    return sets


def ordering(results: dict[str, dict[str, float]], order: list[str]) -> dict[str, bool]:
    """For each quality value: is ``order`` (best first) its order?"""
    verdict = {}
    for key in LOWER_IS_BETTER + HIGHER_IS_BETTER:
        values = [results[name].get(key) for name in order]
        if None in values:
            continue
        sign = 1 if key in LOWER_IS_BETTER else -1
        verdict[key] = all(sign * a < sign * b for a, b in zip(values, values[1:]))
    return verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/bench/quickstart"))
    args = ap.parse_args()
    ref, train = load_eval_set("mnist5k:test"), load_eval_set("mnist5k:train")
    encoders = load_encoders(["reference", "pixels"])
    rows, all_rows = [], []
    for name, gen in generated_sets(args.run).items():
        start = time.perf_counter()
        out = evaluate(gen, ref, metric_names=list(METRICS), encoders=encoders, train=train, cache=None, progress=False)
        all_rows += [{**r, "set": name} for r in out]
        for enc in ("reference", "pixels"):
            values = {k: v for r in out if r["encoder"] == enc for k, v in r["values"].items()
                      if not k.endswith("_std")}
            rows.append({"set": name, "encoder": enc, **values})
        print(f"{name}: {time.perf_counter() - start:.1f}s")
    columns = ["set", "encoder", "fd", "fd_inf", "kid", "swd", "is", "precision", "recall", "density", "coverage",
               "vendi", "authpct", "ct"]
    print(table(rows, columns))
    verdicts = {}
    names = [r["set"] for r in rows if r["encoder"] == "reference"]
    order = [n for n in ("train", "quickstart+cfg", "noise") if n in names]
    for enc in ("reference", "pixels"):
        by_set = {r["set"]: r for r in rows if r["encoder"] == enc}
        verdicts[enc] = ordering(by_set, order)
        wrong = [k for k, ok in verdicts[enc].items() if not ok]
        print(f"{enc}: order {' < '.join(order)} (best first) holds for {sum(verdicts[enc].values())}/"
              f"{len(verdicts[enc])} quality values" + (f"; not for {', '.join(wrong)}" if wrong else ""))
    path = write_result("eval_embedded", {"table": rows, "order_checked": order, "order_holds": verdicts,
                                          "rows": all_rows, "command": "python benchmarks/eval_embedded.py"})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
