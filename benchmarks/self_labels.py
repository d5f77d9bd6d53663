"""Self-labels (self-guided diffusion, arXiv 2210.06462) on the embedded MNIST-5k, treated as if it had no labels.

    python benchmarks/self_labels.py            # → results/self-labels.json

1. How well k-means ids of each feature source agree with the hidden labels (NMI, ARI; k = 10 and 20): pixels, an
   unconditional diffrep run's own features (``run:``, middle block, t = 0.3, the quickstart recipe trained without
   labels), and the supervised reference CNN as a control (it was trained on the labels, so its clusters leak them).
2. Generation: the unconditional run against a run trained on the run-feature self-labels (quickstart recipe,
   ``--condition clusters:k=K,source=run:…``), without and with CFG; 1,000 samples (Euler 50, seed 0; labels
   balanced over the clusters), judged by the reference encoder: FD_ref, precision/recall (k = 5), Vendi, and the
   accuracy of the samples against each cluster's majority true label.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import table, write_result

from diffrep.config import make_config, preset
from diffrep.data import balanced_subset, load_builtin, load_npz
from diffrep.evaluation import metrics
from diffrep.generate import sample_run
from diffrep.reference import encode, judge, load_reference
from diffrep.represent.clusters import agreement, cluster, source_features
from diffrep.train import Trainer

OUT = Path("runs/bench")


def trained(out: Path, steps: int, **options) -> Path:
    cfg = make_config(preset("quickstart"), {"steps": steps, "grid_every": 0}, options)
    Trainer(cfg, out, resume="auto", progress=False).run()
    return out


def agreement_table(unconditional: Path, ks: list[int]) -> list[dict]:
    train = load_builtin("mnist5k")
    rows = []
    for source in ("pixels", f"run:{unconditional}", "reference"):
        features = source_features(train.images, source, 0.3, "cpu", progress=False)
        for k in ks:
            ids = cluster(features, k, seed=0)
            rows.append({"source": source.split(":")[0], "k": k, **agreement(ids, train.labels)})
            print(rows[-1], file=sys.stderr)
    return rows


def scored(npz: Path, reference: torch.Tensor, majority: torch.Tensor | None) -> dict:
    samples = load_npz(npz)
    features, logits = encode(load_reference("mnist5k"), samples.images)
    pr = metrics.prdc(features, reference, k_pr=5, k_dc=5).values
    row = {"fd_ref": round(judge(samples).fd_ref, 4), "precision": round(pr["precision"], 4),
           "recall": round(pr["recall"], 4), "vendi": round(metrics.vendi(features).values["vendi"], 3)}
    if majority is not None:
        row["majority_accuracy"] = round(float((logits.argmax(1) == majority[samples.labels]).float().mean()), 4)
    return row


def majority_labels(run: Path) -> torch.Tensor:
    """Each cluster's most frequent true label."""
    import json

    ids = torch.tensor(json.loads((run / "self_labels.json").read_text())["labels"])
    truth = load_builtin("mnist5k").labels
    return torch.stack([torch.bincount(truth[ids == c], minlength=10).argmax() for c in range(int(ids.max()) + 1)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unconditional", type=Path, default=OUT / "diffusevae-plain",
                   help="an unconditional quickstart run (trained here when missing)")
    p.add_argument("--k", type=int, default=10, help="clusters of the self-labelled run")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 20], help="cluster counts of the agreement table")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--n", type=int, default=1000)
    a = p.parse_args()
    unconditional = trained(a.unconditional, a.steps, class_conditional=False)
    rows_agree = agreement_table(unconditional, a.ks)
    print(table(rows_agree, ["source", "k", "nmi", "ari"]))
    selfl = trained(OUT / f"self-labels-k{a.k}", a.steps, condition=f"clusters:k={a.k},source=run:{unconditional}")
    test = load_builtin("mnist5k", "test")
    reference, _ = encode(load_reference("mnist5k"), test.images[balanced_subset(test.labels, a.n)])
    majority = majority_labels(selfl)
    rows = []
    for name, run, cfg in [("unconditional", unconditional, 1.0), ("self-labels", selfl, 1.0)] + \
            [(f"self-labels, CFG {w:g}", selfl, w) for w in a.cfg]:
        npz = run / "bench_self_labels.npz"
        done = sample_run(run, npz, n=a.n, steps=50, cfg=cfg, progress=False, compile_net=False,
                          labels="none" if run == unconditional else "balanced")
        rows.append({"run": name, "seconds": round(done["seconds"], 1),
                     **scored(npz, reference, None if run == unconditional else majority)})
        print(rows[-1], file=sys.stderr)
    print(table(rows, ["run", "fd_ref", "precision", "recall", "vendi", "majority_accuracy", "seconds"]))
    payload = {"agreement": rows_agree, "generation": rows, "k": a.k, "n_samples": a.n,
               "cluster_majority_labels": majority.tolist(), "sampler": "euler:50",
               "command": "python benchmarks/self_labels.py " + " ".join(sys.argv[1:])}
    print(f"→ {write_result('self-labels', payload)}")


if __name__ == "__main__":
    main()
