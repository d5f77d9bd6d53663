"""Guidance beyond CFG on the quickstart run (issue 20's table): no guidance, CFG (with and without an interval), ADM
classifier guidance by a noise-aware classifier trained for the run, EluCD by a clean classifier, and autoguidance by an
earlier checkpoint.

    python benchmarks/guidance.py                     # → results/guidance.json, guidance.png
    python benchmarks/guidance.py --ppap --ablation --merge   # + PPAP experts and EluCD's ablation, keeping done rows

The run is the README's quickstart recipe (UNet-S, flow matching, 800 steps, class-conditional mnist5k) trained with
``--keep-last 0`` so that its early checkpoints stay for autoguidance; the classifiers are those of
``diffrep train-classifier`` (noisy: a U-Net encoder half; ``--clean``: a strided GroupNorm CNN; seed 1: other
architectures and another seed than the reference CNN that judges).  Each row draws 1,000 class-balanced samples
(Euler, 50 steps, seed 0) and is judged by the reference encoder: accuracy, FD_ref, and in its features
precision/recall (k = 5) and the Vendi score; ``net calls`` counts forwards of a diffusion net per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import figure, judged, table, write_result

from diffrep.config import make_config, preset
from diffrep.data import balanced_subset, load_builtin
from diffrep.generate import sample_run
from diffrep.guidance.train_classifier import train_classifier
from diffrep.reference import encode, load_reference
from diffrep.train import Trainer

RUN = Path("runs/bench/guidance-qs")
CLASSIFIER = RUN / "classifier.safetensors"
CLEAN = RUN / "clean-classifier.safetensors"
WIDE = RUN / "clean-classifier-wide.safetensors"


def rows_wanted(a, cards: dict) -> list[tuple[str, dict]]:
    """(name, sample_run keyword arguments) per row."""
    rows = [("none", {}), ("cfg 1.5", {"cfg": 1.5}), ("cfg 1.5, interval", {"cfg": 1.5, "cfg_interval": a.interval})]
    rows += [(f"classifier s={s:g}", {"guidance": [f"classifier:path={CLASSIFIER},scale={s}"]}) for s in a.scales]
    rows += [(f"elucd β={b:g} s={s:g}", {"guidance": [f"elucd:path={CLEAN},scale={s},beta={b}"]})
             for b in a.betas for s in a.scales]
    rows += [(f"auto ckpt={c} w={w:g}", {"guidance": [f"auto:ckpt={c},w={w}"]}) for c in a.auto_ckpt for w in a.auto_w]
    if a.ppap:
        rows += ppap_rows(a, cards)
    if a.ablation:
        rows += ablation_rows(a, cards)
    return rows


def ablation_rows(a, cards: dict) -> list[tuple[str, dict]]:
    """EluCD's ablation: without the sine-bump schedule (γ = 0); with ``--wide``, also a wider clean classifier (32
    channels against 24, 1.8× the compute; is the classifier the limit?)."""
    rows = [("elucd β=3 s=1 γ=0", {"guidance": [f"elucd:path={CLEAN},scale=1,beta=3,gamma=0"]})]
    if a.wide:
        if not WIDE.exists():
            cards[WIDE.stem] = train_classifier(RUN, WIDE, steps=a.classifier_steps, clean=True, channels=32,
                                                progress=False)
        rows.append(("elucd wide β=3 s=1", {"guidance": [f"elucd:path={WIDE},scale=1,beta=3"]}))
    return rows


def ppap_rows(a, cards: dict) -> list[tuple[str, dict]]:
    """PPAP: one noise-aware classifier per half of the time range, each guiding its own half (compare with the full
    call's single classifier, trained on every t for as many steps, at the same scales and seed)."""
    rows, experts = [], {(0.0, 0.5): RUN / "expert-0-0.5.safetensors", (0.5, 1.0): RUN / "expert-0.5-1.safetensors"}
    for (lo, hi), path in experts.items():
        if not path.exists():
            cards[path.stem] = train_classifier(RUN, path, steps=a.classifier_steps, t_range=(lo, hi), progress=False)
    for s in a.scales:
        specs = [f"classifier:path={path},scale={s},lo={lo},hi={hi}" for (lo, hi), path in experts.items()]
        rows.append((f"PPAP 2 experts s={s:g}", {"guidance": specs}))
    return rows


def net_calls(kw: dict, steps: int) -> int:
    """Diffusion-net forwards per image: CFG's two branches and autoguidance's two nets cost two each."""
    doubled = kw.get("cfg", 1.0) != 1.0 or any(g.startswith("auto") for g in kw.get("guidance", []))
    return steps * (2 if doubled else 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800, help="training steps of the run")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--betas", type=float, nargs="*", default=[3.0, 5.0],
                   help="EluCD's Softplus β (each at every --scales)")
    p.add_argument("--auto-ckpt", type=int, nargs="*", default=[250])
    p.add_argument("--auto-w", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    p.add_argument("--interval", type=float, nargs=2, default=(0.3, 1.0), help="CFG's interval in t (flow: 1 = noise)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--ppap", action="store_true", help="add PPAP's rows: two noise-range experts")
    p.add_argument("--ablation", action="store_true", help="add EluCD's ablation row (γ = 0)")
    p.add_argument("--wide", action="store_true", help="with --ablation: also a wider clean classifier's row")
    p.add_argument("--merge", action="store_true", help="keep the rows of results/guidance.json and draw only new ones")
    a = p.parse_args()
    cfg = make_config(preset("quickstart"), {"steps": a.steps, "keep_last": 0, "grid_every": 0})
    Trainer(cfg, RUN, resume="auto", progress=False).run()
    cards = {}
    for path, clean in ((CLASSIFIER, False), (CLEAN, True)):
        if not path.exists():
            cards[path.stem] = train_classifier(RUN, path, steps=a.classifier_steps, clean=clean, progress=False)
            print(f"{path.stem}: {cards[path.stem]['test_accuracy']}", file=sys.stderr)
    test = load_builtin("mnist5k", "test")
    reference, _ = encode(load_reference("mnist5k"), test.images[balanced_subset(test.labels, a.n)])
    done = {}
    if a.merge and (old := Path(__file__).parent / "results" / "guidance.json").exists():
        previous = json.loads(old.read_text())
        done, cards = {r["guidance"]: r for r in previous["rows"]}, previous["classifiers"] | cards
    rows = []
    for name, kw in rows_wanted(a, cards):
        if name in done:
            rows.append(done[name])
            continue
        npz = RUN / "bench_guidance.npz"
        start = time.perf_counter()
        sample_run(RUN, npz, n=a.n, steps=50, progress=False, compile_net=False, **kw)
        row = {"guidance": name, "net_calls": net_calls(kw, 50), "seconds": round(time.perf_counter() - start, 1),
               **judged(npz, reference)}
        rows.append(row)
        print(row, file=sys.stderr)
    columns = ["guidance", "accuracy", "fd_ref", "precision", "recall", "vendi", "net_calls", "seconds"]
    print(table(rows, columns))
    payload = {"rows": rows, "classifiers": cards, "run": str(RUN), "recipe": "quickstart, --keep-last 0",
               "n_samples": a.n, "sampler": "euler:50",
               "command": "python benchmarks/guidance.py " + " ".join(sys.argv[1:])}
    with figure(Path(__file__).parent / "results" / "guidance.png") as ax:
        for r in rows:
            ax.scatter(r["recall"], r["fd_ref"], label=r["guidance"])
        ax.set(xlabel="recall (reference features, k=5)", ylabel="FD_ref", yscale="log",
               title="guidance on the quickstart run: quality vs variety")
        ax.legend(fontsize=6, ncol=2)
    print(f"→ {write_result('guidance', payload)}")


if __name__ == "__main__":
    main()
