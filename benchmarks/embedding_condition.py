"""Representation-conditioned generation on the embedded MNIST-5k (issue 20): nets conditioned on image embeddings.

    python benchmarks/embedding_condition.py        # → results/embedding-condition.json

Two quickstart-recipe runs (UNet-S, flow matching, 800 steps) are conditioned on each training image's embedding:
from an unconditional diffrep run's own features (``run:``, its middle block at t = 0.3, as the self-labels benchmark;
no labels anywhere) and from the reference CNN (supervised: a control that leaks the labels).  They are compared with
the unconditional run and the class-conditional quickstart run, whose rows (same runs, seed and sampler) are read
from ``results/self-labels.json`` and ``results/guidance.json``.

1. Generation: 1,000 samples (Euler 50, seed 0), each conditioned on a class-balanced training image's embedding,
   without and with CFG 1.5; accuracy is the reference CNN's agreement with the source image's class.
2. Variations (``diffrep sample --like``, no CFG): 10 samples for each of 100 class-balanced test images (never trained
   on):
   accuracy against the test image's class, and the cosine similarity of a variation's reference features to its
   source image's, against the similarity between random test pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import judged, table, write_result

from diffrep.config import make_config, preset
from diffrep.data import balanced_subset, load_builtin, load_npz
from diffrep.generate import sample_run
from diffrep.reference import encode, load_reference
from diffrep.train import Trainer

OUT = Path("runs/bench")


def trained(out: Path, steps: int, **options) -> Path:
    cfg = make_config(preset("quickstart"), {"steps": steps, "grid_every": 0}, options)
    Trainer(cfg, out, resume="auto", progress=False).run()
    return out


def variations(run: Path, sources: torch.Tensor, labels: torch.Tensor, per: int, cfg: float) -> dict:
    """Accuracy against the source's class and the reference-feature cosine similarity to the source."""
    like = run / "bench_like.npz"
    np.savez(like, arr_0=sources.permute(0, 2, 3, 1).numpy(), arr_1=labels.numpy())
    npz = run / "bench_variations.npz"
    sample_run(run, npz, n=per * len(sources), steps=50, cfg=cfg, like=like, progress=False, compile_net=False)
    samples = load_npz(npz)
    reference = load_reference("mnist5k")
    f_samples, logits = encode(reference, samples.images)
    f_sources, _ = encode(reference, sources)
    which = torch.arange(len(samples.images)) % len(sources)
    cos = F.cosine_similarity(f_samples, f_sources[which]).mean()
    return {"variation_accuracy": round(float((logits.argmax(1) == labels[which]).float().mean()), 4),
            "cos_to_source": round(float(cos), 4)}


def earlier_rows(cfg: float) -> list[dict]:
    """The unconditional and class-conditional quickstart runs' rows, as the self-labels and guidance benchmarks
    measured them (the same runs, 1,000 samples, Euler 50, seed 0)."""
    results = Path(__file__).parent / "results"
    self_labels = json.loads((results / "self-labels.json").read_text())["generation"]
    guidance = {r["guidance"]: r for r in json.loads((results / "guidance.json").read_text())["rows"]}
    keys = ("fd_ref", "precision", "recall", "vendi", "seconds")
    rows = [{"run": "unconditional", "cfg": 1.0, "accuracy": None,
             **{k: r[k] for k in keys for r in self_labels if r["run"] == "unconditional"}}]
    for name, w in (("labels", 1.0), (f"labels, CFG {cfg:g}", cfg)):
        r = guidance["none" if w == 1.0 else f"cfg {cfg:g}"]
        rows.append({"run": name, "cfg": w, "accuracy": r["accuracy"], **{k: r[k] for k in keys}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unconditional", type=Path, default=OUT / "diffusevae-plain",
                   help="an unconditional quickstart run (trained here when missing)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--cfg", type=float, default=1.5)
    a = p.parse_args()
    unconditional = trained(a.unconditional, a.steps, class_conditional=False)
    runs = {"embedding: own features": trained(OUT / "embedding-run", a.steps,
                                               condition=f"embedding:source=run:{unconditional}"),
            "embedding: reference CNN": trained(OUT / "embedding-reference", a.steps,
                                                condition="embedding:source=reference")}
    test = load_builtin("mnist5k", "test")
    reference, _ = encode(load_reference("mnist5k"), test.images[balanced_subset(test.labels, a.n)])
    pick = balanced_subset(test.labels, 100, seed=1)
    f_test, _ = encode(load_reference("mnist5k"), test.images[pick])
    shuffled = torch.roll(torch.arange(100), 1)
    random_pairs = round(float(F.cosine_similarity(f_test, f_test[shuffled]).mean()), 4)
    rows = earlier_rows(a.cfg)
    for name, run in runs.items():
        for suffix, w in (("", 1.0), (f", CFG {a.cfg:g}", a.cfg)):
            npz = run / "bench_embedding.npz"
            done = sample_run(run, npz, n=a.n, steps=50, cfg=w, progress=False, compile_net=False)
            row = {"run": name + suffix, "cfg": w, "seconds": round(done["seconds"], 1), **judged(npz, reference)}
            if w == 1.0:
                row.update(variations(run, test.images[pick], test.labels[pick], 10, w))
            rows.append(row)
            print(row, file=sys.stderr)
    columns = ["run", "cfg", "accuracy", "fd_ref", "precision", "recall", "vendi", "variation_accuracy",
               "cos_to_source", "seconds"]
    print(table(rows, columns))
    print(f"cosine similarity of random test pairs (reference features): {random_pairs}")
    payload = {"rows": rows, "random_pair_cosine": random_pairs, "n_samples": a.n, "sampler": "euler:50",
               "variations": "10 per image × 100 class-balanced test images (seed 1)",
               "command": "python benchmarks/embedding_condition.py " + " ".join(sys.argv[1:])}
    print(f"→ {write_result('embedding-condition', payload)}")


if __name__ == "__main__":
    main()
