"""Restoration benchmark: every solver × task with a trained run as the prior, scored against the truth.

For each run, task and solver: PSNR, SSIM, the reference encoder's class accuracy and FD_ref, NFE and
seconds per restoration; with K draws per input (the random-inpainting tasks), the PSNR of their mean
and the coverage of the 90% interval.  A PNG panel shows, per task, three inputs: truth | measurement |
each solver.  Then the issue's checks: every diffusion solver beats ``A⁺y`` in PSNR and TV in class
accuracy on box inpainting, RED-diff against DPS in PSNR and time, the best solver's coverage on random
inpainting, and (``--dps-batch-check``) DPS's batch-size dependence with each norm.

    python benchmarks/restore.py --run qs=runs/qs --n 100 --dps-batch-check 100       # the main table
    python benchmarks/restore.py --run qs=runs/qs --tasks deblur-gauss --solvers pinv --update   # redo rows
    python benchmarks/restore.py --run vp=runs/qs-vp --tasks inpaint-random-70 --name restore-processes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, write_result  # noqa: E402

from diffrep.data import save_grid  # noqa: E402
from diffrep.inverse import restore_run  # noqa: E402

TASKS = {"inpaint-box": {}, "inpaint-random-70": {"fraction": "0.7"}, "inpaint-random-90": {"fraction": "0.9"},
         "sr4": {}, "deblur-gauss": {}}
"""Benchmark task name → (the task, its options): the issue's five settings."""
DIFFUSION = ("reddiff", "dps", "pigdm", "ddrm", "daps")


def task_of(name: str) -> str:
    return "inpaint-random" if name.startswith("inpaint-random") else name


def row(run: str, task: str, solver: str, m: dict) -> dict:
    keep = ("psnr", "ssim", "psnr_posterior_mean", "accuracy", "class_entropy_bits", "fd_ref", "nfe", "seconds",
            "seconds_per_image", "residual_rms", "std_mean", "samples", "n", "solver_options", "precision",
            "checkpoint_step")
    out = {"run": run, "task": task, "solver": solver, **{k: m[k] for k in keep if k in m}}
    if "coverage" in m:
        out["coverage"] = m["coverage"]["interval"]
        out["coverage_range"], out["coverage_range_ideal"] = m["coverage"]["range"], m["coverage"]["range_ideal"]
        out["coverage_varying"] = m["coverage"].get("interval_varying")
        out["varying_fraction"] = m["coverage"].get("varying_fraction")
    return out


def table(rows: list[dict]) -> str:
    head = (f"{'run':8s} {'task':18s} {'solver':8s} {'PSNR':>6s} {'SSIM':>6s} {'acc':>6s} {'FD_ref':>7s} {'cover':>6s} "
            f"{'NFE':>5s} {'s/img':>7s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cov = f"{r['coverage']:.3f}" if "coverage" in r else "—"
        acc = f"{100 * r['accuracy']:.1f}" if "accuracy" in r else "—"
        lines.append(f"{r['run']:8s} {r['task']:18s} {r['solver']:8s} {r['psnr']:6.2f} {r['ssim']:6.3f} {acc:>6s} "
                     f"{r.get('fd_ref', float('nan')):7.2f} {cov:>6s} {r['nfe']:5d} {r['seconds_per_image']:7.3f}")
    return "\n".join(lines)


def checks(rows: list[dict]) -> dict:
    """The issue's directions, each with the numbers behind it (``None`` where a row is missing)."""
    by = {(r["run"], r["task"], r["solver"]): r for r in rows}
    out = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        for task in TASKS:
            base, tv = by.get((run, task, "pinv")), by.get((run, task, "tv"))
            for s in DIFFUSION:
                r = by.get((run, task, s))
                if r is None:
                    continue
                if base is not None:
                    out[f"{run}/{task}/{s} PSNR > pinv"] = {"ok": r["psnr"] > base["psnr"], "value": r["psnr"],
                                                            "pinv": base["psnr"]}
                if task == "inpaint-box" and tv is not None and "accuracy" in r:
                    out[f"{run}/{task}/{s} accuracy > tv"] = {"ok": r["accuracy"] > tv["accuracy"],
                                                              "value": r["accuracy"], "tv": tv["accuracy"]}
            red, dps = by.get((run, task, "reddiff")), by.get((run, task, "dps"))
            if red and dps:
                out[f"{run}/{task} reddiff vs dps"] = {
                    "ok": red["psnr"] >= dps["psnr"] - 0.1 and red["seconds"] <= dps["seconds"] / 4,
                    "psnr_reddiff": red["psnr"], "psnr_dps": dps["psnr"], "time_ratio": red["seconds"] / dps["seconds"]}
        for task in ("inpaint-random-70", "inpaint-random-90"):
            covered = [by[(run, task, s)] for s in DIFFUSION if "coverage" in by.get((run, task, s), {})]
            if covered:
                best = max(covered, key=lambda r: r["psnr"])
                out[f"{run}/{task} best solver's coverage in [0.8, 0.95]"] = {
                    "ok": 0.8 <= best["coverage"] <= 0.95, "solver": best["solver"], "coverage": best["coverage"],
                    "all": {r["solver"]: r["coverage"] for r in covered}}
    return out


def panel(scratch: Path, run: str, tasks: list[str], solvers: list[str], inputs: int = 3) -> tuple[torch.Tensor, int]:
    """Per task, ``inputs`` rows of truth | measurement | each solver's first restoration."""
    import numpy as np
    import torch.nn.functional as F

    from diffrep.data import to_uint8

    cells = []
    for task in tasks:
        arrays = {s: np.load(scratch / f"{run}-{task}-{s}.npz") for s in solvers}
        first = arrays[solvers[0]]
        truth = torch.from_numpy(first["truth"]).permute(0, 3, 1, 2)
        y = torch.from_numpy(first["measurement"])
        shown = to_uint8(F.interpolate(y, size=truth.shape[2:], mode="nearest").clamp(-1, 1))
        for i in range(inputs):
            cells += [truth[i], shown[i]] + [torch.from_numpy(arrays[s]["arr_0"][i]).permute(2, 0, 1) for s in solvers]
    return torch.stack(cells), len(solvers) + 2


def rescore(path: Path) -> None:
    """Add the coverage over varying pixels to rows written before it existed, from the saved ``uint8`` draws."""
    import numpy as np

    from diffrep.data import to_model_range
    from diffrep.evaluation.restoration import coverage

    result = json.loads(path.read_text())
    for r in result["rows"]:
        if r["samples"] > 1 and r.get("coverage_varying") is None:
            with np.load(Path(result["npz_dir"]) / f"{r['run']}-{r['task']}-{r['solver']}.npz") as z:
                draws = to_model_range(torch.from_numpy(z["restorations"]).permute(0, 1, 4, 2, 3).flatten(0, 1))
                truth = to_model_range(torch.from_numpy(z["truth"]).permute(0, 3, 1, 2))
            c = coverage(draws.reshape(truth.shape[0], -1, *truth.shape[1:]), truth)
            r.update(coverage_varying=c["interval_varying"], varying_fraction=c["varying_fraction"],
                     coverage_rescored_from="the uint8 draws of the .npz", coverage_uint8=c["interval"])
    from diffrep.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(result, f, indent=1)


def dps_batch_dependence(run: Path, n: int, steps: int) -> dict:
    """DPS on sr4 with each norm, the same images restored in batches of ``n`` and of 1/10th of that."""
    out = {}
    for norm in ("sample", "batch"):
        results = {}
        for batch in (n, max(1, n // 10)):
            m = restore_run(run, "sr4", "dps", n=n, solver_opts={"norm": norm, "steps": str(steps)}, batch_size=batch,
                            progress=False)
            results[batch] = m["psnr"]
        out[norm] = {"psnr_by_batch_size": results, "difference_db": abs(results[n] - results[max(1, n // 10)])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR (repeatable; required but with --rescore)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--solvers", default="pinv,tv," + ",".join(DIFFUSION))
    p.add_argument("--solver-opt", action="append", default=[], metavar="SOLVER:KEY=VALUE")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--samples", type=int, default=1, help="K posterior draws for every task")
    p.add_argument("--coverage-samples", type=int, default=8, help="K on the random-inpainting tasks")
    p.add_argument("--coverage-n", type=int, default=25, help="inputs on the random-inpainting tasks (each K times)")
    p.add_argument("--dps-batch-check", type=int, default=0, metavar="STEPS", help="also run the DPS norm check")
    p.add_argument("--name", default="restore")
    p.add_argument("--update", action="store_true", help="replace only the recomputed rows of an existing result")
    p.add_argument("--rescore", action="store_true", help="only add coverage over varying pixels to an existing result")
    a = p.parse_args()
    if a.rescore:
        return rescore(RESULTS / f"{a.name}.json")
    if not a.run:
        p.error("--run NAME=RUN_DIR is required")
    opts: dict[str, dict[str, str]] = {}
    for item in a.solver_opt:
        solver, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        opts.setdefault(solver, {})[key] = value
    out_json, rows, commands, extra_earlier = RESULTS / f"{a.name}.json", [], [], {}
    if a.update and out_json.is_file():     # keep the earlier rows this invocation does not recompute
        earlier = json.loads(out_json.read_text())
        redo = {(spec.partition("=")[0], t, s) for spec in a.run for t in a.tasks.split(",") for s in a.solvers.split(",")}
        rows = [r for r in earlier["rows"] if (r["run"], r["task"], r["solver"]) not in redo]
        commands = earlier.get("commands", [earlier["command"]])
        extra_earlier = {k: earlier[k] for k in ("dps_batch_dependence", "npz_dir") if k in earlier}
    scratch = Path(extra_earlier.get("npz_dir") or tempfile.mkdtemp(prefix="restore-bench-"))
    extra_earlier["npz_dir"] = str(scratch)
    scratch.mkdir(parents=True, exist_ok=True)

    for spec in a.run:
        name, _, path = spec.partition("=")
        for task in a.tasks.split(","):
            random = task.startswith("inpaint-random")
            k, n = (a.coverage_samples, a.coverage_n) if random else (a.samples, a.n)
            for solver in a.solvers.split(","):
                m = restore_run(Path(path), task_of(task), solver, n=n, samples=k if solver in DIFFUSION else 1,
                                task_opts=TASKS[task], solver_opts=opts.get(solver), progress=False,
                                out=scratch / f"{name}-{task}-{solver}.npz", overwrite=True)
                rows.append(row(name, task, solver, m))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                _write(a.name, rows, commands, {"npz_dir": str(scratch)})
    extra = {**extra_earlier, **({"dps_batch_dependence": dps_batch_dependence(Path(a.run[0].partition("=")[2]), a.n,
                                                                              a.dps_batch_check)}
                                 if a.dps_batch_check else {})}
    result = _write(a.name, rows, commands, extra)
    first = rows[0]["run"]
    ran = [r for r in rows if r["run"] == first]
    if all((scratch / f"{first}-{r['task']}-{r['solver']}.npz").is_file() for r in ran):
        images, columns = panel(scratch, first, list(dict.fromkeys(r["task"] for r in ran)),
                                list(dict.fromkeys(r["solver"] for r in ran)))
        save_grid(images, RESULTS / f"{a.name}.png", nrow=columns)
    else:
        print(f"panel not redrawn: the earlier rows' draws are no longer in {scratch}")
    print(table(rows))
    for name, c in result["checks"].items():
        print(f"{'PASS' if c['ok'] else 'MISS'} {name}: {json.dumps({k: v for k, v in c.items() if k != 'ok'})}")
    if extra:
        print(json.dumps(extra, indent=1))


def _write(name: str, rows: list[dict], commands: list[str], extra: dict) -> dict:
    command = "python benchmarks/restore.py " + " ".join(sys.argv[1:])
    result = {"command": command, "commands": commands + [command], "torch": torch.__version__, "rows": rows,
              "checks": checks(rows), **extra}
    write_result(name, result)
    return result

if __name__ == "__main__":
    main()
