"""What the loop does every N steps besides checkpointing: log, draw a sample grid, evaluate.

Each action is a function of the trainer's state, so the loop only decides *when*.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from diffrep import distributed
from diffrep.data import BUILTIN, load_builtin, save_grid
from diffrep.processes import ImageBound
from diffrep.rng import keyed_generator
from diffrep.samplers import get_sampler, initial_noise

if TYPE_CHECKING:
    from diffrep.train.loop import Trainer


def log_record(out: Path, record: dict, writer) -> None:
    """Append ``record`` to ``metrics.jsonl`` and TensorBoard ``train/<key>``."""
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    for k, v in record.items():
        if k != "step":
            writer.add_scalar(f"train/{k}", v, record["step"])


class LossWindow:
    """The loss and its parts summed since the last log line, kept on the device (no host sync between log lines)."""

    def __init__(self, device: torch.device, step: int):
        self.loss, self.parts = torch.zeros((), device=device), {}
        self.start, self.first_step = time.perf_counter(), step

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        self.loss += loss
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0) + v

    def record(self, step: int, lr: float, batch_size: int) -> dict:
        """The log line of the steps since the last one (means over steps and ranks: a collective); starts a new
        window."""
        n, seconds = step - self.first_step, time.perf_counter() - self.start
        means = {k: float(distributed.mean_over_ranks(v)) / n
                 for k, v in {"loss": self.loss, **dict(sorted(self.parts.items()))}.items()}
        self.loss.zero_()
        self.parts.clear()
        self.start, self.first_step = time.perf_counter(), step
        return {"step": step, **means, "lr": lr, "img_per_s": n * batch_size / seconds}


def sample_grid(trainer: Trainer, n: int = 64) -> Path | None:
    """A PNG grid of EMA samples with fixed noise (class ``i mod C`` in cell ``i``), drawn by rank 0.

    Every rank calls it: under FSDP gathering the EMA weights is collective."""
    net = trainer.sampling_net()
    if not trainer.world.is_main:
        return None
    cfg, device = trainer.cfg, trainer.device
    cond = torch.arange(n, device=device) % trainer.num_classes if trainer.num_classes else None
    ts = trainer.process.time_grid(cfg.grid_steps)
    x = initial_noise(trainer.process, (n, *trainer.x0_shape), ts[0], torch.Generator().manual_seed(cfg.seed), device)
    denoiser = trainer.process.denoiser(net, trainer.autocast)
    if trainer.image_condition is not None:     # DiffuseVAE: refine fixed VAE samples
        denoiser = ImageBound(denoiser, trainer.image_condition.sample(n, keyed_generator(cfg.seed, 0, 1)).to(device))
    with torch.no_grad():
        x = get_sampler(cfg.grid_sampler)(denoiser, x, ts, cond=cond)
    path = trainer.out / "grids" / f"step_{trainer.step:07d}.png"
    save_grid(trainer.space.decode(x.cpu()), path, nrow=trainer.num_classes or None)
    return path


class PeriodicEval:
    """Evaluate ``eval_samples`` class-balanced EMA samples (``grid_sampler``, ``grid_steps``) against the
    test split of a built-in dataset (else the training data); sampling is sharded over ranks.

    Appends to ``eval.jsonl``, TensorBoard ``eval/<encoder>/<value>`` and redraws ``eval.png``.  The
    reference sets and encoders are loaded at the first call and kept.
    """

    def __init__(self):
        self._sets = None

    def __call__(self, trainer: Trainer, writer=None) -> list[dict]:
        from diffrep.evaluation.evaluate import EvalSet, evaluate, load_encoders, plot_curves
        from diffrep.evaluation.features import FeatureCache
        from diffrep.generate import generate, make_labels

        cfg, world = trainer.cfg, trainer.world
        if self._sets is None:
            ref = load_builtin(cfg.data, "test") if cfg.data in BUILTIN else trainer.data
            self._sets = (EvalSet(f"{cfg.data}:test" if cfg.data in BUILTIN else cfg.data, ref.images),
                          EvalSet(f"{cfg.data}:train", trainer.data.images), load_encoders(cfg.eval_encoders.split(","), data=cfg.data))
        ref, train, encoders = self._sets
        labels = make_labels("balanced", cfg.eval_samples, trainer.num_classes) if trainer.num_classes else None
        chunks = generate(trainer.sampling_net(), trainer.process, trainer.x0_shape, cfg.eval_samples,
                          sampler=cfg.grid_sampler, steps=cfg.grid_steps, seed=cfg.seed, labels=labels,
                          autocast=trainer.autocast, chunks=lambda j: j % world.size == world.rank,
                          progress=trainer.progress, space=trainer.space, image_condition=trainer.image_condition)
        images = distributed.broadcast_from_main(distributed.gather_chunks(chunks))
        rows = evaluate(EvalSet(f"step {trainer.step}", images), ref, metric_names=cfg.eval_metrics.split(","),
                        encoders=encoders, train=train, device=str(trainer.device), cache=FeatureCache(),
                        cache_generated=False, progress=trainer.progress)
        if world.is_main:
            record = {"step": trainer.step, **{f"{r['encoder']}/{k}": v for r in rows for k, v in r["values"].items()}}
            with open(trainer.out / "eval.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if writer is not None and k != "step":
                    writer.add_scalar(f"eval/{k}", v, trainer.step)
            plot_curves(trainer.out / "eval.jsonl", trainer.out / "eval.png")
        return rows
