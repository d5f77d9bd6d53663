"""The zero-shot Diffusion Classifier (Li et al., arXiv 2303.16203): classify an image by which class
label makes the conditional model denoise it best.

For image ``x0`` and ``P`` (t, ε) pairs, the error of class ``c`` is
``e_c = Σ_j w(t_j) · ‖f_θ(x_{t_j}, t_j, c) − target_j‖`` (the training target of the process — ε for
ε-prediction, the velocity for flow, …; L2² or L1), and the prediction is ``argmin_c e_c``.
Every class of an image sees the *same* pairs (the paired comparison that makes the method work):
pair ``j`` of image ``i`` uses ``t_j`` from an even grid (the midpoints of the process's sampling
grid) and ε drawn from a generator keyed by ``(seed, i, j)``.

Schedules (which pairs each class gets):

- ``exhaustive``: all ``P`` pairs for every class: ``P·C`` network calls per image.
- ``adaptive``: the paper's rounds — after ``n_1`` pairs keep the best ``k_1`` classes, after ``n_2``
  the best ``k_2``, … (its CIFAR-10 setting is ``(50, 5), (500, 1)``: 2,750 calls per image); the
  pairs of each round are spread evenly over the t grid (:func:`spread_order`), as the paper's are.
- ``racing``: diffrep's schedule — pairs in order of timestep informativeness (the fitted
  weights), evaluated in small rounds; after each round every class whose mean error is worse
  than the best class's by more than ``z`` standard errors of the paired difference is dropped;
  stops when one class is left or the pairs run out.

Timestep weights: ``uniform``, or ``fitted`` on a small labelled split — ``w(t) ∝ max(0, d̄(t) / s(t))``
where ``d(t)`` is the error gap between the best wrong class and the true class (the follow-up
paper, arXiv 2505.17955, shows that the weighting matters).  Probabilities are
``softmax(−e / τ)`` with ``τ`` fitted by maximum likelihood on the labelled split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from tqdm import tqdm

from diffrep.data import PixelSpace, Space
from diffrep.errors import DiffrepError
from diffrep.precision import Precision, resolve_precision
from diffrep.processes import Process
from diffrep.rng import keyed_generator

if TYPE_CHECKING:
    from diffrep.latent.diffusevae import Reconstructions

SCHEDULES = ("exhaustive", "adaptive", "racing")
NORMS = ("l2", "l1")


def pair_times(process: Process, pairs: int) -> torch.Tensor:
    """``pairs`` times, the midpoints of the process's sampling grid (even in t; in σ^(1/ρ) for edm)."""
    grid = process.time_grid(pairs)
    return ((grid[:-1] + grid[1:]) / 2).flip(0).float()


def spread_order(pairs: int) -> torch.Tensor:
    """An order of ``0 … pairs−1`` whose every prefix is spread evenly over the t grid (van der Corput
    bit reversal), so that the first rounds of a schedule see low, middle and high noise alike."""
    bits = max(1, (pairs - 1).bit_length())
    keys = [int(f"{i:0{bits}b}"[::-1], 2) for i in range(2 ** bits)]
    return torch.tensor([i for _, i in sorted(zip(keys, range(2 ** bits))) if i < pairs])


class PairErrors:
    """Per-(image, class, pair) denoising errors, computed lazily and cached, in batched forwards; ``space``
    encodes the ``uint8`` images into the net's ``x0`` (the pixel space by default), ``condition`` gives a DiffuseVAE
    net their reconstructions; ``on_calls(k)`` is told of every
    ``k`` network calls (a progress bar)."""

    def __init__(self, net: torch.nn.Module, process: Process, images: torch.Tensor, num_classes: int, *,
                 pairs: int, seed: int = 0, norm: str = "l2", autocast: bool = True, max_batch: int = 250,
                 space: Space | None = None, condition: Reconstructions | None = None,
                 on_calls: Callable[[int], object] | None = None):
        if norm not in NORMS:
            raise DiffrepError(f"unknown error norm {norm!r}: choose one of {', '.join(NORMS)}")
        self.process, self.norm, self.max_batch, self.seed = process, norm, max_batch, seed
        self.device = next(net.parameters()).device
        self.denoiser = process.denoiser(net, autocast)
        self.x0 = (space or PixelSpace()).encode(images).to(self.device)
        self.image = None if condition is None else condition.reconstruct(images).to(self.device)
        self.times = pair_times(process, pairs)
        self.errors = torch.full((len(images), num_classes, pairs), float("nan"))
        self.requested = torch.zeros(self.errors.shape, dtype=torch.bool)
        self.on_calls = on_calls

    @property
    def calls(self) -> torch.Tensor:
        """Network calls per image that the schedule run since :meth:`new_schedule` asked for."""
        return self.requested.sum((1, 2))

    def asked(self) -> torch.Tensor:
        """The errors the current schedule asked for (NaN elsewhere)."""
        return torch.where(self.requested, self.errors, torch.full_like(self.errors, float("nan")))

    def new_schedule(self) -> None:
        """Forget which pairs were asked for, keep the computed errors: another schedule can then be
        compared on exactly the same (t, ε) pairs, paying only for errors not yet computed."""
        self.requested.zero_()

    def _noise(self, i: int, j: int) -> torch.Tensor:
        return torch.randn(self.x0.shape[1:], generator=keyed_generator(self.seed, i, j))

    @torch.no_grad()
    def fill(self, requests: list[tuple[int, int, int]]) -> None:
        """Mark ``(image, class, pair)`` triples as asked for and compute those not yet known (batched forwards)."""
        for r in requests:
            self.requested[r] = True
        todo = [r for r in requests if math.isnan(self.errors[r])]
        for start in range(0, len(todo), self.max_batch):
            chunk = todo[start:start + self.max_batch]
            img = torch.tensor([r[0] for r in chunk])
            cls = torch.tensor([r[1] for r in chunk], device=self.device)
            pair = torch.tensor([r[2] for r in chunk])
            eps = torch.stack([self._noise(int(i), int(j)) for i, j in zip(img, pair)]).to(self.device)
            t = self.times[pair].to(self.device)
            x0 = self.x0[img.to(self.device)]
            image = None if self.image is None else self.image[img.to(self.device)]
            raw, _ = self.denoiser.raw(self.process.corrupt(x0, t, eps), t, cls, (), image)
            diff = (raw - self.process.target(x0, eps, t)).flatten(1)
            err = diff.pow(2).mean(1) if self.norm == "l2" else diff.abs().mean(1)
            self.errors[img, cls.cpu(), pair] = err.cpu()
            if self.on_calls is not None:
                self.on_calls(len(chunk))


@dataclass
class Classification:
    """Predictions, the mean weighted error per class (NaN where a class was dropped) and calls per image."""

    predictions: torch.Tensor
    scores: torch.Tensor
    calls: torch.Tensor
    schedule: str


def _weighted_mean(errors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over known pairs of ``w·error`` (last dim), ignoring NaNs."""
    known = ~errors.isnan()
    w = weights.expand_as(errors) * known
    return (errors.nan_to_num() * w).sum(-1) / w.sum(-1).clamp_min(1e-12)


def classify(pe: PairErrors, *, schedule: str = "exhaustive", weights: torch.Tensor | None = None,
             rounds: list[tuple[int, int]] | None = None, round_size: int = 2, z: float = 3.0,
             order: torch.Tensor | None = None) -> Classification:
    """Classify every image of ``pe`` with ``schedule`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise DiffrepError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    n, classes, pairs = pe.errors.shape
    weights = torch.ones(pairs) if weights is None else weights
    order = spread_order(pairs) if order is None else order
    alive = torch.ones(n, classes, dtype=torch.bool)
    if schedule == "exhaustive":
        pe.fill([(i, c, j) for i in range(n) for c in range(classes) for j in range(pairs)])
    elif schedule == "adaptive":
        done = 0
        for upto, keep in rounds or [(max(1, pairs // 10), max(1, classes // 2)), (pairs, 1)]:
            upto = min(upto, pairs)
            pe.fill([(i, c, int(order[j])) for i in range(n) for c in range(classes) if alive[i, c]
                     for j in range(done, upto)])
            done = upto
            score = _weighted_mean(pe.asked()[:, :, order[:done]], weights[order[:done]])
            score[~alive] = float("inf")
            kept = score.topk(min(keep, classes), dim=1, largest=False).indices
            alive = torch.zeros_like(alive).scatter_(1, kept, True)
    else:
        done = 0
        while done < pairs and bool((alive.sum(1) > 1).any()):
            upto = min(pairs, done + round_size)
            pe.fill([(i, c, int(order[j])) for i in range(n) if alive[i].sum() > 1 for c in range(classes)
                     if alive[i, c] for j in range(done, upto)])
            done = upto
            alive &= ~_losing(pe.asked()[:, :, order[:done]], weights[order[:done]], alive, z)
    score = _weighted_mean(pe.asked(), weights)
    score[~alive] = float("nan")
    predictions = score.nan_to_num(float("inf")).argmin(1)
    return Classification(predictions, score, pe.calls, schedule)


def _losing(errors: torch.Tensor, weights: torch.Tensor, alive: torch.Tensor, z: float) -> torch.Tensor:
    """Classes whose paired error gap to the current best exceeds ``z`` standard errors (needs ≥ 2 pairs)."""
    score = _weighted_mean(errors, weights)
    score[~alive] = float("inf")
    best = score.argmin(1)
    gap = errors - errors[torch.arange(len(errors)), best][:, None]          # paired differences, n × C × P
    known = ~gap.isnan()
    count = known.sum(-1)
    mean = _weighted_mean(gap, weights)
    var = ((gap - mean[..., None]).pow(2) * known).nan_to_num().sum(-1) / (count - 1).clamp_min(1)
    stderr = (var / count.clamp_min(1)).sqrt()
    return alive & (count >= 2) & (mean > z * stderr) & (mean > 0)


def fit_time_weights(pe: PairErrors, labels: torch.Tensor) -> torch.Tensor:
    """``w(t) ∝ max(0, mean/std over images of (best wrong class error − true class error))`` at each pair time
    (computed exhaustively on a labelled split); uniform where no time separates the classes."""
    n, classes, pairs = pe.errors.shape
    pe.fill([(i, c, j) for i in range(n) for c in range(classes) for j in range(pairs)])
    true = pe.errors[torch.arange(n), labels]
    wrong = pe.errors.clone()
    wrong[torch.arange(n), labels] = float("inf")
    gap = wrong.min(1).values - true                                         # n × P
    w = (gap.mean(0) / gap.std(0).clamp_min(1e-12)).clamp_min(0)
    return w / w.sum() if w.sum() > 0 else torch.full((pairs,), 1.0 / pairs)


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """τ maximising the likelihood of ``softmax(−scores/τ)`` (log-spaced search)."""
    taus = torch.logspace(-6, 2, 161)
    nll = torch.stack([torch.nn.functional.cross_entropy(-scores / tau, labels) for tau in taus])
    return float(taus[nll.argmin()])


def probabilities(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class probabilities ``softmax(−scores / τ)`` (dropped classes get 0)."""
    return torch.softmax(-scores.nan_to_num(float("inf")) / temperature, dim=1)


def classify_run(run: str | Path, *, data: str | None = None, split: str = "test", limit: int | None = None,
                 pairs: int = 32, schedule: str = "exhaustive", time_weights: str = "uniform", fit_images: int = 100,
                 rounds: list[tuple[int, int]] | None = None, z: float = 3.0, norm: str = "l2", seed: int = 0,
                 batch_size: int = 250, precision: str = "auto", device: str = "auto",
                 on_start: Callable[[Precision], None] | None = None, progress: bool = True,
                 test_data: str | None = None) -> dict:
    """Classify ``split`` of labelled ``data`` (default: the run's own dataset; other data and ``test_data`` as
    :func:`~diffrep.data.labelled_split`) with a class-conditional run; returns accuracy, calls per image, images/s
    and, with ``time_weights="fitted"``, the weights and temperature fitted on ``fit_images`` train images."""
    from diffrep.config import load_run_config
    from diffrep.data import balanced_subset, labelled_split
    from diffrep.runs import check_images_fit_run, load_run

    data = data or load_run_config(run).data
    if time_weights not in ("uniform", "fitted"):
        raise DiffrepError(f"--time-weights {time_weights!r}: choose uniform or fitted")
    net, process, _, info, space, condition = load_run(run, "ema", device)
    if not info["num_classes"]:
        raise DiffrepError(f"{run} is an unconditional model: the Diffusion Classifier needs class labels")
    images = labelled_split(data, split, test_data)
    check_images_fit_run(images.images, info, run, data)
    if int(images.labels.max()) >= info["num_classes"]:
        raise DiffrepError(f"{images.name} has labels up to {int(images.labels.max())}, but {run} knows "
                           f"{info['num_classes']} classes: classify data with the run's classes")
    chosen = resolve_precision(precision, next(net.parameters()).device)
    if on_start is not None:
        on_start(chosen)
    autocast = chosen.autocast
    if limit:
        images = images.subset(balanced_subset(images.labels, min(limit, len(images))))
    weights, order, temperature, fitted = torch.ones(pairs), None, None, {}
    bar = tqdm(desc="classify", unit="call", disable=not progress, dynamic_ncols=True)
    if time_weights == "fitted" or schedule == "racing":
        fit = labelled_split(data, "train", test_data)
        fit = fit.subset(balanced_subset(fit.labels, fit_images))
        pe_fit = PairErrors(net, process, fit.images, info["num_classes"], pairs=pairs, seed=seed + 1, norm=norm,
                            autocast=autocast, max_batch=batch_size, on_calls=bar.update, space=space,
                            condition=condition)
        fitted_weights = fit_time_weights(pe_fit, fit.labels)
        if time_weights == "fitted":
            weights = fitted_weights
        order = fitted_weights.argsort(descending=True)
        temperature = fit_temperature(_weighted_mean(pe_fit.errors, weights), fit.labels)
        fitted = {"fit_images": fit_images, "time_weights": fitted_weights.tolist(), "temperature": temperature}
    start = time.perf_counter()
    pe = PairErrors(net, process, images.images, info["num_classes"], pairs=pairs, seed=seed, norm=norm,
                    autocast=autocast, max_batch=batch_size, on_calls=bar.update, space=space,
                    condition=condition)
    result = classify(pe, schedule=schedule, weights=weights, rounds=rounds, z=z, order=order)
    seconds = time.perf_counter() - start
    bar.close()
    return {"run": str(run), "data": images.name, "n": len(images), "pairs": pairs, "schedule": schedule,
            "time_weights": time_weights, "norm": norm, "seed": seed,
            "accuracy": float((result.predictions == images.labels).float().mean()),
            "calls_per_image": float(result.calls.float().mean()), "exhaustive_calls": pairs * info["num_classes"],
            "seconds": seconds, "images_per_s": len(images) / seconds, **fitted}
