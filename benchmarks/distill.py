"""Distillation on the quickstart run (issue 20): guidance distillation (arXiv 2210.03142) and progressive
distillation (arXiv 2202.00512).

    python benchmarks/distill.py                      # → results/distill.json, distill.png
    python benchmarks/distill.py --part guidance      # or --part progressive: one half (the other's rows are kept)

The teacher is the guidance benchmark's run (the README's quickstart recipe: UNet-S, flow matching, 800 steps,
class-conditional mnist5k), trained here if it is missing.  Every row draws 1,000 class-balanced samples (seed 0) judged
by the reference encoder: accuracy, FD_ref, precision/recall (k = 5), Vendi; ``nfe`` counts net forwards per image.

1. Guidance: a student of ``diffrep distill --kind guidance`` (scales 1…3) against the teacher's two-branch CFG, both
   with Euler at 50 steps: the student's ``--cfg S`` costs 50 forwards, the teacher's 100.
2. Progressive: students of 32, 16, 8 and 4 DDIM steps, each distilled from the one before (the first from the
   teacher at 64), against the teacher at the same NFE with DDIM (= Euler for flow), DPM-Solver++(2M) and Heun
   (``2·steps − 1`` forwards: the nearest count not above).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import figure, judged, table, write_result

from diffrep.config import make_config, preset
from diffrep.data import balanced_subset, load_builtin
from diffrep.distill.student import distill
from diffrep.generate import sample_run
from diffrep.reference import encode, load_reference
from diffrep.train import Trainer

TEACHER = Path("runs/bench/guidance-qs")
OUT = Path("runs/bench/distill")
RESULT = Path(__file__).parent / "results" / "distill.json"


def row(name: str, run: Path, nfe: int, reference: torch.Tensor, n: int, **kw) -> dict:
    npz = OUT / "bench.npz"
    start = time.perf_counter()
    done = sample_run(run, npz, n=n, progress=False, compile_net=False, **kw)
    result = {"row": name, "sampler": f"{done['sampler']}:{done['steps']}", "cfg": kw.get("cfg", 1.0), "nfe": nfe,
              "seconds": round(time.perf_counter() - start, 1), **judged(npz, reference)}
    print(result, file=sys.stderr)
    return result


def guidance_rows(a, reference: torch.Tensor) -> tuple[list[dict], dict]:
    student = OUT / "guidance"
    start = time.perf_counter()
    distill(TEACHER, student, "guidance", max_scale=a.max_scale, resume="auto", progress=False, steps=a.steps,
            lr=a.lr, batch_size=a.batch_size)
    card = {"steps": a.steps, "lr": a.lr, "max_scale": a.max_scale, "seconds": round(time.perf_counter() - start, 1)}
    rows = [row("teacher, no guidance", TEACHER, 50, reference, a.n)]
    for s in a.scales:
        rows.append(row(f"teacher CFG {s:g}", TEACHER, 100, reference, a.n, cfg=s))
        rows.append(row(f"student s={s:g}", student, 50, reference, a.n, cfg=s))
    rows.append(row("student s=1", student, 50, reference, a.n))
    return rows, card


def progressive_rows(a, reference: torch.Tensor) -> tuple[list[dict], dict]:
    rows, cards, teacher, steps = [], {}, TEACHER, 32
    while steps >= min(a.nfes):
        student = OUT / f"progressive-{steps}"
        start = time.perf_counter()
        distill(teacher, student, "progressive", sampling_steps=steps, resume="auto", progress=False,
                steps=a.round_steps, lr=a.lr, batch_size=a.batch_size)
        cards[steps] = {"teacher": str(teacher), "steps": a.round_steps,
                        "seconds": round(time.perf_counter() - start, 1)}
        if steps in a.nfes:
            rows.append(row(f"student {steps} steps", student, steps, reference, a.n))
        teacher, steps = student, steps // 2
    for nfe in a.nfes:
        rows.append(row(f"teacher DDIM {nfe}", TEACHER, nfe, reference, a.n, sampler="ddim", steps=nfe))
        rows.append(row(f"teacher DPM++2M {nfe}", TEACHER, nfe, reference, a.n, sampler="dpmpp_2m", steps=nfe))
        heun = (nfe + 1) // 2
        rows.append(row(f"teacher Heun {2 * heun - 1}", TEACHER, 2 * heun - 1, reference, a.n, sampler="heun",
                        steps=heun))
    return rows, cards


def plot(progressive: list[dict]) -> None:
    with figure(Path(__file__).parent / "results" / "distill.png") as ax:
        for prefix in ("student", "teacher DDIM", "teacher DPM++2M", "teacher Heun"):
            pts = sorted((r["nfe"], r["fd_ref"]) for r in progressive if r["row"].startswith(prefix))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=prefix.replace("student", "progressive student"))
        ax.set(xscale="log", yscale="log", xlabel="net forwards per image (NFE)", ylabel="FD_ref",
               title="progressive distillation on the quickstart run")
        ax.legend(fontsize=7)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("both", "guidance", "progressive"), default="both")
    p.add_argument("--steps", type=int, default=400, help="training steps of the guidance student")
    p.add_argument("--round-steps", type=int, default=200, help="training steps of each progressive student")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-scale", type=float, default=3.0)
    p.add_argument("--scales", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--nfes", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--n", type=int, default=1000)
    a = p.parse_args()
    cfg = make_config(preset("quickstart"), {"keep_last": 0, "grid_every": 0})
    Trainer(cfg, TEACHER, resume="auto", progress=False).run()
    test = load_builtin("mnist5k", "test")
    reference, _ = encode(load_reference("mnist5k"), test.images[balanced_subset(test.labels, a.n)])
    payload = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    commands = payload.get("commands", {})
    for part, make in (("guidance", guidance_rows), ("progressive", progressive_rows)):
        if a.part in ("both", part):
            rows, cards = make(a, reference)
            payload[part] = {"rows": rows, "students": cards}
            commands[part] = "python benchmarks/distill.py " + " ".join(sys.argv[1:])
            columns = ["row", "sampler", "cfg", "nfe", "accuracy", "fd_ref", "precision", "recall", "vendi", "seconds"]
            print(table(rows, columns))
    payload.update(teacher=str(TEACHER), recipe="quickstart, --keep-last 0", n_samples=a.n, commands=commands)
    payload.pop("machine", None)
    if "progressive" in payload:
        plot(payload["progressive"]["rows"])
    print(f"→ {write_result('distill', payload)}")


if __name__ == "__main__":
    main()
