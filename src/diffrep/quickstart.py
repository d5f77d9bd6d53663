"""The README's main job, sized to the machine: train on mnist5k, sample with and without CFG, judge.

The ``quickstart`` preset (UNet-S, 800 steps of 128 images, 2 × 1,000 samples at 50 Euler steps)
trains in about 10 minutes (12–15 in all) on a 2-core CPU that computes bf16 natively (AMX, AVX512_BF16).  On a CPU
without it (AVX2 only: most laptops) the same job in fp32 would take hours, so the quickstart
measures the machine first: a few training steps and a sampling batch of each plan, timed, give
each plan's projected wall time.  The preset runs where it fits (with :data:`PRESET_SLACK`); otherwise
the ``small`` plan trains for as many steps as fit the budget: a 4× cheaper UNet-XS at batch 32 (more
updates per image, which pays at this compute), 2 × 500 samples with Heun at 5 steps and CFG 2.5.
Measured on mnist5k (``benchmarks/quickstart.py``; scratch runs judged at 500 samples): with 16k
training images (500 steps) CFG 2.5 reaches 95.8% accuracy, with 26k (800 steps) 98.0%; CFG 1.5 gives
84% and 92% there, so the small plan guides harder.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffrep.config import TrainConfig, load_run_config, make_config, preset
from diffrep.errors import DiffrepError
from diffrep.samplers import network_evaluations

BUDGET_S = 780.0
"""The wall time the small plan is fitted to (train + sample + judge): 13 minutes, inside the 15 the
quickstart may take on a 2-core laptop."""
PRESET_SLACK = 1.5
"""The preset runs while its projection is within this factor of the budget, about 20 minutes (it
takes 12–15 where bf16 is native, and a busy spell must not change that machine's numbers); the small
plan is fitted to the budget itself."""
JUDGE_S = 10.0
"""Judging two sample sets (reference-encoder features of them and of 2,000 real images): seconds, about."""
SIZES = ("auto", "preset", "small")


@dataclass(frozen=True)
class Plan:
    """One quickstart configuration: training options over the ``quickstart`` preset, and how to sample."""

    name: str
    overrides: dict
    n: int
    sampler: str
    sampler_steps: int
    cfg_scale: float = 1.5
    min_steps: int = 0
    """0: train the plan's steps as they are; else fit the steps to the budget, but never below this."""

    def config(self, steps: int | None = None, compile_net: bool | None = None) -> TrainConfig:
        return make_config(preset("quickstart"), self.overrides, {"steps": steps, "compile": compile_net})

    def sample_sets(self) -> list[tuple[str, float]]:
        """``(name, cfg scale)`` of the two sample sets the quickstart judges."""
        label = f"{self.sampler} {self.sampler_steps}"
        return [(f"no CFG, {label}", 1.0), (f"CFG {self.cfg_scale:g}, {label}", self.cfg_scale)]


PLANS = {
    "preset": Plan("preset", {}, n=1000, sampler="euler", sampler_steps=50),
    "small": Plan("small", {"model": "UNet-XS", "batch_size": 32, "steps": 2400, "lr": 2e-3, "warmup": 100,
                            "ema_decay": 0.995, "ckpt_every": 200, "grid_every": 400},
                  n=500, sampler="heun", sampler_steps=5, cfg_scale=2.5, min_steps=400),
}


@dataclass
class Speed:
    """Measured throughput of one plan on this machine: training and sampling images (net calls) per second."""

    train_img_s: float
    sample_img_s: float

    def seconds(self, cfg: TrainConfig, plan: Plan, n: int) -> float:
        """Projected wall time of the whole job: training, two sample sets (CFG doubles the batch), judging."""
        calls = n * 3 * network_evaluations(plan.sampler, plan.sampler_steps)
        return cfg.steps * cfg.batch_size / self.train_img_s + calls / self.sample_img_s + JUDGE_S


def measure_speed(cfg: TrainConfig, device: str = "auto", batch: int = 64, sample_batch: int = 250) -> Speed:
    """Time one training step of the run's batch, at most ``batch`` images, and one sampling call of
    ``sample_batch`` (the sampler's batch; each after a warm-up call) of ``cfg``'s net, in a scratch
    folder.  A training batch smaller than the preset's 128 makes its projection somewhat pessimistic."""
    from diffrep.trainer import Trainer

    batch = min(batch, cfg.batch_size)
    probe = dataclasses.replace(cfg, batch_size=batch, grad_accum=1, compile=False, plugins=[])
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(probe, Path(scratch) / "run", device=device, progress=False)
        trainer.train_step(0)
        start = time.perf_counter()
        float(trainer.train_step(1))
        train_s = time.perf_counter() - start
        x = torch.randn(sample_batch, *trainer.data.shape, device=trainer.device)
        t = torch.full((sample_batch,), 0.5, device=trainer.device)
        cond = torch.zeros(sample_batch, dtype=torch.long, device=trainer.device) if trainer.num_classes else None
        denoiser = trainer.process.denoiser(trainer.ema, trainer.autocast)
        with torch.inference_mode():
            denoiser(x, t, cond)
            start = time.perf_counter()
            denoiser(x, t, cond).x0.sum().item()
            sample_s = time.perf_counter() - start
    return Speed(batch / train_s, sample_batch / sample_s)


@dataclass
class Choice:
    """The plan the quickstart runs, its config, samples per set, and why (for the start-up lines)."""

    plan: Plan
    cfg: TrainConfig
    n: int
    eta_s: float | None
    why: str


def choose(size: str = "auto", *, steps: int | None = None, n: int | None = None, compile_net: bool | None = None,
           device: str = "auto", resume_from: Path | None = None, budget_s: float = BUDGET_S) -> Choice:
    """The plan to run: ``size`` ``preset`` or ``small`` as asked, or ``auto``: the preset when its measured
    projection is within :data:`PRESET_SLACK` × ``budget_s``, else the small plan with its steps fitted to
    ``budget_s``.  A resumed quickstart keeps the plan (and steps) its folder records."""
    if size not in SIZES:
        raise DiffrepError(f"unknown --size {size!r}: choose one of {', '.join(SIZES)}")
    if resume_from is not None and (Path(resume_from) / "config.yaml").is_file():
        recorded = load_run_config(resume_from)
        plan = next((p for p in PLANS.values() if p.config().model == recorded.model), PLANS["preset"])
        cfg = plan.config(steps or recorded.steps, compile_net)
        return Choice(plan, cfg, n or plan.n, None, f"the plan {resume_from} was started with")
    if size != "auto":
        plan = PLANS[size]
        return Choice(plan, plan.config(steps, compile_net), n or plan.n, None, f"--size {size}")
    measured = []
    for plan in PLANS.values():
        cfg = plan.config(steps, compile_net)
        speed = measure_speed(cfg, device)
        eta = speed.seconds(cfg, plan, n or plan.n)
        measured.append(f"{plan.name}: {cfg.model} {speed.train_img_s:.0f} img/s training, {eta / 60:.0f} min")
        if plan.name == "preset" and eta <= PRESET_SLACK * budget_s:
            return Choice(plan, cfg, n or plan.n, eta, f"measured {measured[-1]}")
    if steps is None:
        cfg, eta = _fit_steps(cfg, plan, speed, n or plan.n, budget_s)
    return Choice(plan, cfg, n or plan.n, eta, "measured " + "; ".join(measured) +
                  f" → the small plan, {cfg.steps} steps to fit {budget_s / 60:.0f} min")


def _fit_steps(cfg: TrainConfig, plan: Plan, speed: Speed, n: int, budget_s: float) -> tuple[TrainConfig, float]:
    """``cfg`` with as many steps as fit ``budget_s`` (at most the plan's own, at least its ``min_steps``)."""
    fixed = speed.seconds(dataclasses.replace(cfg, steps=0), plan, n)
    fit = int((budget_s - fixed) * speed.train_img_s / cfg.batch_size) // 50 * 50
    steps = max(plan.min_steps, min(cfg.steps, fit))
    cfg = dataclasses.replace(cfg, steps=steps)
    return cfg, speed.seconds(cfg, plan, n)
