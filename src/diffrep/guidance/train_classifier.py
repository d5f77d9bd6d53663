"""``diffrep train-classifier RUN``: the noise-aware classifier of ADM classifier guidance (arXiv 2105.05233), trained
on the run's data, in the run's space, with the run's process: cross-entropy at ``x_t`` for ``t`` drawn as the run's
training draws it.  ``--clean`` trains an off-the-shelf kind of classifier of clean ``x0`` instead, for EluCD.  Each
step's batch, times and noise come from a generator seeded by ``(seed, step)``."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffrep.data import labelled_split
from diffrep.errors import DiffrepError
from diffrep.guidance.classifier import CleanClassifier, NoisyClassifier, classifier_logits, save_classifier
from diffrep.rng import keyed_generator


def train_classifier(run: Path | str, out: Path | str, *, steps: int = 1500, batch_size: int = 128, lr: float = 1e-3,
                     channels: int | None = None, seed: int = 1, clean: bool = False,
                     t_range: tuple[float, float] | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Train and save a :class:`NoisyClassifier` (a :class:`CleanClassifier` with ``clean``) for ``run``; returns its
    card (also stored in the file): the run, process, shapes, options, seconds and the test split's accuracy at a few
    noise levels (on clean images for a clean classifier).  ``t_range``: train at ``t`` uniform in that range of the
    process's time (σ for EDM) only, an expert for one noise range (PPAP)."""
    from diffrep.runs import load_run

    loaded = load_run(run, device=device)
    info, process, space, cfg = loaded.info, loaded.process, loaded.space, loaded.config
    if not info["num_classes"]:
        raise DiffrepError(f"{run} is unconditional: classifier guidance needs a class-conditional run (its labels)")
    if t_range is not None and not 0 <= t_range[0] < t_range[1] <= process.t_max:
        raise DiffrepError(f"--t-range {t_range[0]:g},{t_range[1]:g}: give 0 ≤ lo < hi ≤ {process.t_max:g}, within the "
                           f"{process.name} process's time")
    train, test = labelled_split(cfg.data, "train"), labelled_split(cfg.data, "test")
    dev = next(loaded.net.parameters()).device
    x0, labels = space.encode(train.images).to(dev), train.labels.to(dev)
    torch.manual_seed(seed)
    kind = CleanClassifier if clean else NoisyClassifier
    classifier = kind(x0.shape[1], info["num_classes"], **({"channels": channels} if channels else {})).to(dev)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.05)
    start = time.perf_counter()
    for step in tqdm(range(steps), desc="train-classifier", disable=not progress):
        g = keyed_generator(seed, step)
        idx = torch.randint(len(x0), (batch_size,), generator=g).to(dev)
        t = process.sample_time(batch_size, g) if t_range is None else \
            t_range[0] + (t_range[1] - t_range[0]) * torch.rand(batch_size, generator=g)
        t = t.to(dev)
        noise = torch.randn((batch_size, *x0.shape[1:]), generator=g).to(dev)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        if clean:       # shifted by up to 2 positions (circularly): without noise to regularise it, it overfits
            dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            logits = classifier(torch.roll(x0[idx], (dy, dx), dims=(2, 3)))
        else:
            logits = classifier_logits(classifier, process, process.corrupt(x0[idx], t, noise), t)
        loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
        optimizer.step()
    classifier.eval()
    card = {"run": str(Path(run).resolve()), "checkpoint_step": info["step"], "process": info["process"],
            "x0_shape": list(x0.shape[1:]), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "clean": clean, "t_range": t_range, "seconds": round(time.perf_counter() - start, 1)}
    x_test = space.encode(test.images).to(dev)
    with torch.no_grad():
        if clean:
            correct = (classifier(x_test).argmax(1).cpu() == test.labels).float().mean()
            card["test_accuracy"] = {"0": round(float(correct), 4)}
        else:
            card["test_accuracy"] = noisy_accuracy(classifier, process, x_test, test.labels, seed)
    save_classifier(classifier.cpu(), card, Path(out))
    return card


@torch.no_grad()
def noisy_accuracy(classifier: NoisyClassifier, process, x0: torch.Tensor, labels: torch.Tensor, seed: int) -> dict:
    """Accuracy on ``x0`` corrupted at a quarter, half and three quarters of the way along the sampling grid."""
    grid = process.time_grid(4)
    out = {}
    for t in (float(grid[3]), float(grid[2]), float(grid[1])):
        tt = torch.full((len(x0),), t, device=x0.device)
        noise = torch.randn(x0.shape, generator=keyed_generator(seed, 10**6)).to(x0.device)
        logits = classifier_logits(classifier, process, process.corrupt(x0, tt, noise), tt)
        out[f"{t:g}"] = round(float((logits.argmax(1).cpu() == labels).float().mean()), 4)
    return out
