"""``diffrep restore`` as a function: a run, a task, a solver, data → an ``.npz`` of restorations and metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from diffrep.data import BUILTIN, balanced_subset, load_dataset, save_grid, to_uint8
from diffrep.errors import DiffrepError
from diffrep.inverse.operators import Operator
from diffrep.inverse.restore import check_solver_fits, measure, score, solve_all
from diffrep.inverse.solvers import get_solver
from diffrep.inverse.tasks import make_operator, task_options
from diffrep.precision import Precision, resolve_precision

LABEL_MODES = ("none", "true")


def refuse_existing(*paths: Path | None, overwrite: bool) -> None:
    """A one-line error for an output that exists, unless ``overwrite``."""
    for path in paths:
        if path is not None and Path(path).exists() and not overwrite:
            raise DiffrepError(f"{path} exists: pass --overwrite to replace it, or choose another path")


def load_inputs(spec: str, n: int):
    """``n`` class-balanced images of ``spec`` (``mnist5k:test``, an ``.npz``, a folder; the first ``n`` when unlabelled)."""
    name, _, split = spec.partition(":")
    data = load_dataset(name, split or "test") if name in BUILTIN else load_dataset(spec)
    if n > len(data):
        raise DiffrepError(f"--n {n}: {spec} holds only {len(data)} images")
    index = balanced_subset(data.labels, n) if data.labels is not None else torch.arange(n)
    return data.subset(index), (name if name in BUILTIN else None)


def condition(mode: str, labels: torch.Tensor | None, info: dict, config) -> torch.Tensor | None:
    """The labels the prior is conditioned on: ``none`` (the unconditional prior) or ``true`` (the truths' classes)."""
    if mode not in LABEL_MODES:
        raise DiffrepError(f"--labels {mode}: choose one of {', '.join(LABEL_MODES)}")
    conditional = info["num_classes"] > 0
    if mode == "true":
        if not conditional:
            raise DiffrepError("--labels true: the run is unconditional (trained without labels); use --labels none")
        if labels is None:
            raise DiffrepError("--labels true: the data has no labels; use --labels none")
        return labels
    if conditional and config.label_dropout == 0:
        raise DiffrepError("the run is class-conditional and never saw the null class (--label-dropout 0), so it has "
                           "no unconditional prior: pass --labels true")
    return None


def shown_measurement(op: Operator, y: torch.Tensor) -> torch.Tensor:
    """The measurement as an image of the truth's size (nearest upsampling, grey repeated to RGB)."""
    c, h, w = op.in_shape
    if y.shape[2:] != (h, w):
        y = F.interpolate(y, size=(h, w), mode="nearest")
    return to_uint8(y.clamp(-1, 1).expand(-1, c, -1, -1) if y.shape[1] != c else y.clamp(-1, 1))


def panel(truth: torch.Tensor, y_shown: torch.Tensor, restored: torch.Tensor, rows: int = 10, draws: int = 4) -> torch.Tensor:
    """Rows of truth | measurement | up to ``draws`` restorations | per-pixel std (white: std ≥ 1)."""
    rows = min(rows, len(truth))
    k = min(draws, restored.shape[1])
    std = to_uint8((restored.std(1) * 2 - 1).clamp(-1, 1)) if restored.shape[1] > 1 else torch.zeros_like(truth)
    cells = [[truth[i], y_shown[i], *to_uint8(restored[i, :k]), std[i]] for i in range(rows)]
    return torch.stack([c for row in cells for c in row]), k + 3


def restore_run(run: Path, task: str, solver_name: str, *, data: str = "mnist5k:test", n: int = 100, samples: int = 1,
                task_opts: dict[str, str] | None = None, solver_opts: dict[str, str] | None = None,
                sigma_y: float = 0.05, labels: str = "none", seed: int = 0, batch_size: int = 100,
                weights: str = "ema", precision: str = "auto", device: str = "auto", progress: bool = True,
                out: Path | None = None, grid: Path | None = None, overwrite: bool = False,
                on_start: Callable[[Precision], None] | None = None) -> dict:
    """Restore ``n`` images of ``data`` measured by ``task`` with ``solver`` and the run as the prior; returns the
    metrics (and writes ``out``/``grid`` when given)."""
    from diffrep.io import provenance, save_npz
    from diffrep.runs import check_images_fit_run, load_run, refuse_latent

    if n < 1 or samples < 1:
        raise DiffrepError(f"--n and --samples must be at least 1, got {n} and {samples}")
    refuse_existing(out, grid, overwrite=overwrite)
    if sigma_y < 0:
        raise DiffrepError(f"--sigma-y {sigma_y}: the measurement noise must be non-negative")
    opts = task_options(task, task_opts or {})
    solver = get_solver(solver_name, solver_opts)
    inputs, builtin = load_inputs(data, n)
    net, process, config, info, space, image_condition = load_run(run, weights, device)
    refuse_latent(space, run, image_condition)
    check_images_fit_run(inputs.images, info, run, data)
    op = make_operator(task, inputs.shape, n, opts, seed)
    check_solver_fits(solver, solver_name, op, sigma_y)
    cond = condition(labels, inputs.labels, info, config)
    chosen = resolve_precision(precision, next(net.parameters()).device)
    if on_start is not None:
        on_start(chosen)
    y = measure(op, inputs.images, sigma_y, seed)
    denoiser = process.denoiser(net, chosen.autocast) if solver.uses_prior else None
    restored, seconds = solve_all(solver, denoiser, op, y, sigma_y, samples=samples, seed=seed, batch_size=batch_size,
                                  labels=cond, device=next(net.parameters()).device, progress=progress)
    metrics = score(restored, inputs.images, y, op, labels=inputs.labels, judge=reference_judge(builtin))
    features = metrics.pop("features", None)
    if features is not None:
        metrics["fd_ref"] = fd_ref_to_test(features, builtin)
    metrics.update({"task": task, "task_options": opts, "solver": solver_name, "solver_options": vars(solver),
                    "sigma_y": sigma_y, "labels": labels, "nfe": solver.nfe(), "seconds": seconds,
                    "seconds_per_image": seconds / (n * samples), "precision": chosen.name,
                    "checkpoint_step": info["step"], "data": data, "seed": seed, "batch_size": batch_size})
    if out is not None:
        arrays = {"arr_0": to_uint8(restored[:, 0]).permute(0, 2, 3, 1).numpy(),
                  "restorations": to_uint8(restored.flatten(0, 1)).reshape(n, samples, *inputs.shape)
                  .permute(0, 1, 3, 4, 2).numpy(),
                  "truth": inputs.images.permute(0, 2, 3, 1).numpy(), "measurement": y.numpy(),
                  "metrics": np.array(json.dumps(metrics)), **{f"operator_{k}": v for k, v in op.params().items()}}
        if inputs.labels is not None:
            arrays["arr_1"] = inputs.labels.numpy()
        save_npz(out, provenance(run, info["step"]), **arrays)
    if grid is not None:
        images, ncol = panel(inputs.images, shown_measurement(op, y), restored)
        save_grid(images, grid, nrow=ncol)
    return metrics


def reference_judge(builtin: str | None):
    if builtin is None:
        return None
    from diffrep.reference import encode, load_reference

    net = load_reference(builtin)
    return lambda images: encode(net, images)


def fd_ref_to_test(features: torch.Tensor, builtin: str, n_ref: int = 1000) -> float:
    """FD_ref of restorations against ``n_ref`` class-balanced test images (the judge's yardstick set)."""
    from diffrep.data import load_builtin
    from diffrep.evaluation.metrics import frechet_distance
    from diffrep.reference import encode, load_reference

    test = load_builtin(builtin, "test")
    smallest = int(torch.bincount(test.labels).min())
    test = test.subset(balanced_subset(test.labels, min(n_ref, smallest * test.num_classes)))
    return frechet_distance(features, encode(load_reference(builtin), test.images)[0])
