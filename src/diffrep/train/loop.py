"""The training loop: optimiser, EMA, bf16 autocast, accumulation, checkpoints, logging.

Every random draw of step ``s`` (data order, times, noise, label dropout, flips) comes
from generators seeded by ``(seed, s)`` for the *global* batch, which each process
then slices.  So the trajectory is a function of the config alone: a resume needs
only the step, the weights, the EMA and the optimiser state, and it continues
bit-for-bit; the numbers do not depend on how the batch is split into micro-batches
or processes.  Plug-ins that draw randomness (SRA, CEP, UMD) get a
:class:`~diffrep.rng.BatchDraws` of stream ``(seed, step, PLUGIN_STREAM)``: each draw made for
the global batch, then sliced to the micro-batch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from diffrep import distributed
from diffrep.checkpoint import latest_checkpoint, remove_partial_checkpoints, save_checkpoint
from diffrep.config import TrainConfig, save_config
from diffrep.data import load_dataset, open_space
from diffrep.data.spaces import open_image_condition
from diffrep.distill import distill_record, make_objective
from diffrep.errors import DiffrepError
from diffrep.io import atomic_write, provenance
from diffrep.loss import Batch
from diffrep.plugins import Plugin, WarmStart, build_plugins, setup_plugins
from diffrep.processes import make_process
from diffrep.rng import BatchDraws
from diffrep.runs import build_model
from diffrep.runtime import CompiledOrEager, pick_device, use_deterministic_kernels
from diffrep.represent.embeddings import condition_sizes, conditioned
from diffrep.train.batches import (OBJECTIVE_STREAM, PLUGIN_STREAM, WARMUP_STREAM, EpochSampler, draw_batch,
                                   slice_batch, step_generator)
from diffrep.train.objectives import Objective
from diffrep.train.optim import make_optimizer
from diffrep.train.rundir import check_resumable, choose_precision, clear_run, folder_state, lock_run_dir, trim_metrics
from diffrep.train.periodic import LossWindow, PeriodicEval, log_record, sample_grid
from diffrep.train.schedules import ema_decay_at, lr_at
from diffrep.train.signals import StopRequest

NO_BAD_STEP = 2**62
"""``bad_step``'s value while every loss has been finite."""
STOP_CHECK_EVERY = 5
"""Under torchrun, how often (in steps) the ranks agree on a stop request (a host sync each time)."""


class TrainingDiverged(DiffrepError):
    pass


class Trainer:
    """Trains ``cfg`` into ``out``; ``run()`` returns the final step."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool | str = False, plugins: list[Plugin] | None = None,
                 device: str = "auto", progress: bool = True, objective: Objective | None = None,
                 overwrite: bool = False):
        self.world = distributed.current()
        if cfg.batch_size % (self.world.size * cfg.grad_accum):
            raise DiffrepError(f"--batch-size {cfg.batch_size} must be divisible by processes × --grad-accum "
                               f"= {self.world.size} × {cfg.grad_accum}")
        self.out, self.progress = Path(out), progress and self.world.is_main
        self.device = pick_device(device)
        self.precision = choose_precision(cfg, self.out, self.device, resume)
        self.cfg = cfg = dataclasses.replace(cfg, precision=self.precision.name)     # the run records the choice
        if cfg.compile and cfg.channels_last and self.device.type == "cpu":
            raise DiffrepError("--channels-last with --compile on the CPU: Inductor (torch 2.13) computes wrong U-Net "
                               "gradients in that layout; drop --channels-last (it is slower on the CPU anyway)")
        if cfg.deterministic:
            use_deterministic_kernels()
        self.plugins = nn.ModuleList(build_plugins(cfg.plugins, cfg.data) if plugins is None else plugins)
        self.data = load_dataset(cfg.data, "train", cfg.image_size)
        self.space = open_space(cfg.space, self.data.shape, norm=cfg.latent_norm, device=self.device)
        self.x0_shape = self.space.x0_shape(self.data.shape)
        self.image_condition = open_image_condition(cfg.diffusevae, self.data.shape, self.device)
        # classes (k for self-labels, computed once the folder is ours) or an embedding's size (embedded then too)
        self.num_classes, self.embedding_dim = condition_sizes(cfg.condition, cfg.class_conditional, self.data,
                                                               self.device)
        self.process = make_process(cfg.process, cfg.prediction, cfg.schedule, cfg.time_sampling)
        torch.manual_seed(cfg.seed)
        self.net = build_model(cfg, self.x0_shape, self.num_classes, self.embedding_dim).to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        setup_plugins(self.plugins, self.net, self.ema, self.process, self.x0_shape, self.data.shape)
        self.plugins.to(self.device)
        self.sampler = EpochSampler(len(self.data), cfg.batch_size, cfg.seed)
        self.autocast = self.precision.autocast
        self.step = 0
        self.objective = objective or make_objective(cfg.distill, self.x0_shape, self.num_classes, self.device,
                                                     self.autocast)
        self._evaluate = PeriodicEval()
        ckpt = self._open_run_dir(resume, overwrite)
        self.data, self.embeddings, self.condition = conditioned(self.data, cfg.condition, self.out, cfg.seed,
                                                                 self.device, self.progress)
        self.space.prepare(self.data.images, cfg.hflip, cfg.latent_cache, self.progress)    # the latent cache
        if self.image_condition is not None:
            self.image_condition.prepare(self.data.images, cfg.hflip, self.progress)
        if ckpt is None:                    # on the whole net, before it is wrapped or sharded
            if hasattr(self.objective, "initialize"):       # a distilled student starts as its teacher
                self.objective.initialize(self.net)
                self.ema.load_state_dict(self.net.state_dict())
            self._initialize_plugins()
        if cfg.fsdp and self.world.size == 1:
            warnings.warn("--fsdp shards the net over torchrun's processes; with one process it trains unsharded",
                          stacklevel=2)
        self.sharded = cfg.fsdp and self.world.size > 1
        if self.sharded:
            for module in (self.net, self.ema):
                distributed.shard(module, module.shard_units)
            self.train_net = self.net
        else:
            self.train_net = self.net if self.world.size == 1 else nn.parallel.DistributedDataParallel(self.net)
        self.head_params = [p for p in self.plugins.parameters() if p.requires_grad]
        net_params = [p for p in self.net.parameters() if p.requires_grad]
        self.params = net_params + self.head_params
        self.optimizer = make_optimizer(cfg, net_params, self.head_params)
        self.forward_net = CompiledOrEager(self.train_net) if cfg.compile else self.train_net
        if ckpt is not None:
            self._load(ckpt)
        self._write_run_files()

    # ---- run directory -------------------------------------------------------------
    def _open_run_dir(self, resume: bool | str, overwrite: bool = False):
        """Check the run folder before any work: the checkpoint to resume from (``None`` for a new run).

        ``resume``: ``True`` continues the run (an error where there is none), ``"auto"`` continues one if there
        is one and starts one if not; ``overwrite`` deletes the run there and starts a new one.  A run that died
        before its first checkpoint starts over either way; a non-empty folder that is not a diffrep run is never
        written into."""
        if overwrite and resume:
            raise DiffrepError("--overwrite starts the run over and --resume continues it: pass one of them")
        state = folder_state(self.out)
        if state == "foreign":
            raise DiffrepError(f"--out {self.out} is a folder that is not empty and holds no diffrep run: choose a "
                               "new or empty folder (diffrep never writes into a foreign folder)")
        if state == "unstarted" and self.world.is_main:
            warnings.warn(f"{self.out} holds a run that stopped before its first checkpoint: starting it over",
                          stacklevel=3)
        self._lock = lock_run_dir(self.out) if self.world.is_main else None
        if overwrite and state in ("run", "unstarted"):
            if self.world.is_main:
                warnings.warn(f"--overwrite: deleted {', '.join(clear_run(self.out))} in {self.out}", stacklevel=3)
            distributed.barrier()
            state = "new"
        if self.world.is_main and (partial := remove_partial_checkpoints(self.out)):
            warnings.warn(f"removed {len(partial)} checkpoint(s) whose writing was interrupted: {', '.join(partial)}",
                          stacklevel=3)
        ckpt = latest_checkpoint(self.out) if state == "run" else None
        if resume is True and state == "new":
            raise DiffrepError(f"--resume: {self.out} holds no run to continue; run without --resume (or with "
                               "--resume auto) to start one")
        if state == "run" and not resume:
            raise DiffrepError(f"{self.out} already holds a run: pass --resume to continue it, --overwrite to start "
                               "it over, or choose another --out")
        if state == "run":
            check_resumable(self.out, ckpt, self.cfg)
        else:
            self.cfg.refuse_ignored_options()
            if self.world.is_main:
                used = 0 if self.data.labels is None else int(torch.unique(self.data.labels).numel())
                for message in self.cfg.suspicious(len(self.data), used, self.num_classes):
                    warnings.warn(message, stacklevel=3)
        distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
        return ckpt

    def _write_run_files(self) -> None:
        if self.world.is_main:
            save_config(self.cfg, self.out / "config.yaml")
            with atomic_write(self.out / "model.json", "w") as f:
                json.dump({**self.model_info(), "provenance": provenance()}, f, indent=1)
            trim_metrics(self.out / "metrics.jsonl", self.step)
        distributed.barrier()

    def _initialize_plugins(self) -> None:
        """A fresh run's plug-in initialisation (ERW's warm-up), before step 0; the EMA starts from its result.

        Every rank runs it on the same global batches; rank 0's weights are then sent to all, so the
        ranks start identical even where GPU kernels are not bit-reproducible."""
        warm = WarmStart(self.warmup_batch, lambda params: make_optimizer(self.cfg, params), self.autocast, self.progress,
                         self.cfg.grad_clip, lambda k: lr_at(self.cfg, k))
        if not any([p.initialize(self.net, warm) for p in self.plugins]):
            return
        distributed.broadcast_tensors(list(self.net.state_dict().values()) + list(self.plugins.state_dict().values()))
        self.ema.load_state_dict(self.net.state_dict())

    def warmup_batch(self, k: int) -> Batch:
        """The ``k``-th batch of a plug-in's warm-up: the global batch, on the device, with its own draws."""
        batch = draw_batch(self.data, self.sampler.indices(k), self.cfg, self.process, k, WARMUP_STREAM, self.space,
                           self.image_condition, self.embeddings)
        return slice_batch(batch, slice(None), self.device)

    def _load(self, ckpt) -> None:
        for module, name in ((self.net, "model"), (self.ema, "ema")):
            module.load_state_dict(distributed.shard_state_like(ckpt.weights(name), module.state_dict()))
        if self.plugins:
            self.plugins.load_state_dict(ckpt.weights("heads"))
        state = ckpt.state()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.optimizer.load_state_dict(distributed.shard_optimizer_state(state["optimizer"], params))
        for p, s in zip(self.plugins, state.get("plugins", [])):
            p.load_extra_state(s)
        self.step = int(state["step"])

    def save(self) -> Path | None:
        """Checkpoint the current step: rank 0 writes full tensors (under FSDP every rank helps gather them)."""
        weights = {"model": distributed.full_state(self.net.state_dict()),
                   "ema": distributed.full_state(self.ema.state_dict())}
        optimizer = distributed.full_state(self.optimizer.state_dict())
        if not self.world.is_main:
            return None
        if self.plugins:
            weights["heads"] = self.plugins.state_dict()
        state = {"step": self.step, "optimizer": optimizer, "plugins": [p.extra_state() for p in self.plugins]}
        return save_checkpoint(self.out, self.step, weights, state, self.cfg.identity(), self.cfg.keep_last,
                               model=self.model_info())

    def describe(self) -> str:
        """The start-up line: what trains, on what, where, and from which step."""
        params = sum(p.numel() for p in self.net.parameters()) / 1e6
        start = f"resuming at step {self.step}" if self.step else "a new run"
        latents = "×".join(map(str, self.x0_shape))
        space = "" if self.cfg.space == "pixels" else f" as {latents} latents of {self.cfg.space}"
        space += f", refining reconstructions by {self.cfg.diffusevae} (DiffuseVAE)" if self.cfg.diffusevae else ""
        return (f"train: {self.cfg.model} ({params:.2f}M parameters), {self.cfg.process}, {self.cfg.data} "
                f"({len(self.data):,} images{space}) → {self.out}: {start}, to step {self.cfg.steps}")

    def model_info(self) -> dict:
        """What ``model.json`` holds (a copy goes into each checkpoint's manifest): the images' and ``x0``'s shapes, the
        space, a DiffuseVAE run's conditioning, classes, model, process."""
        condition = None if self.image_condition is None else self.image_condition.describe()
        return {"image_shape": list(self.data.shape), "x0_shape": list(self.x0_shape), "space": self.space.describe(),
                "image_condition": condition, "condition": self.condition, "distill": distill_record(self.cfg.distill),
                "num_classes": self.num_classes, "model": self.cfg.model, "process": self.process.describe()}

    @torch.no_grad()
    def sampling_net(self) -> nn.Module:
        """The EMA net to sample from: itself, or under FSDP an unsharded copy on every rank (collective),
        so that each rank can sample its own share without waiting on the others."""
        if not self.sharded:
            return self.ema
        with torch.random.fork_rng(devices=[]):     # building a net draws initial weights: keep training's RNG
            net = build_model(self.cfg, self.x0_shape, self.num_classes, self.embedding_dim).to(self.device)
        net.load_state_dict(distributed.full_state(self.ema.state_dict()))
        return net.requires_grad_(False).eval()

    # ---- one step ----------------------------------------------------------------------
    def train_step(self, step: int) -> torch.Tensor:
        """One optimiser step on the global batch of ``step``; returns this rank's loss (a tensor: no host sync).

        Rank ``r`` of ``W`` takes the ``r``-th ``1/W`` of the global batch and splits it into
        ``grad_accum`` micro-batches; DDP averages the gradients over ranks (synchronising
        only after the last micro-batch), so the update is the full batch's mean gradient.
        """
        cfg = self.cfg
        batch = draw_batch(self.data, self.sampler.indices(step), cfg, self.process, step, space=self.space,
                           condition=self.image_condition, embeddings=self.embeddings)
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(cfg, step)
        denoiser = self.process.denoiser(self.forward_net, self.autocast)
        local = cfg.batch_size // self.world.size
        micro = local // cfg.grad_accum
        taps = tuple(sorted({t for p in self.plugins for t in p.taps}))
        total = torch.zeros((), device=self.device)
        self.parts: dict[str, torch.Tensor] = {}
        for k in range(cfg.grad_accum):
            start = self.world.rank * local + k * micro
            rows = slice(start, start + micro)              # of the global batch
            mb = slice_batch(batch, rows, self.device)
            draws = BatchDraws(step_generator(cfg.seed, step, PLUGIN_STREAM), cfg.batch_size, rows)
            objective_draws = BatchDraws(step_generator(cfg.seed, step, OBJECTIVE_STREAM), cfg.batch_size, rows)
            for p in self.plugins:
                mb = p.transform_batch(mb, step, draws)
            last = k == cfg.grad_accum - 1
            with self._gradient_sync(last):
                out = self.objective(denoiser, mb, step, taps, objective_draws)
                loss = out.total
                for p in self.plugins:
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                        terms = p.loss_terms(mb, out, step, self.ema)    # heads and frozen encoders in bf16 too
                    for name, term in terms.items():
                        out.parts[f"{p.name}/{name}"] = term.detach()
                        loss = loss + term
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
            for name, v in out.parts.items():
                self.parts[name] = self.parts.get(name, 0) + v / cfg.grad_accum
        for p in self.head_params:      # a head left out of this step's loss: zero, so every rank holds a gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        distributed.average_gradients(self.head_params)     # DDP averages the net's; the heads are outside it
        if cfg.grad_clip > 0:
            distributed.clip_grad_norm(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema(step)
        return total

    def _gradient_sync(self, last: bool):
        """Average gradients over ranks only after the last micro-batch of a step."""
        if self.sharded:
            self.net.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last or self.world.size == 1 else self.train_net.no_sync()

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1.0 - ema_decay_at(self.cfg, step))

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Train to ``cfg.steps``; returns the step reached.  The run folder's lock is released on return."""
        try:
            return self._run()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _run(self) -> int:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        cfg = self.cfg
        if self.step >= cfg.steps:
            return self.step
        writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1) if self.world.is_main else None
        bad_step = torch.full((), NO_BAD_STEP, dtype=torch.long, device=self.device)
        window = LossWindow(self.device, self.step)
        last_good = self.step
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress, dynamic_ncols=True)
        self.net.train()
        with StopRequest() as stop:
            try:
                while self.step < cfg.steps:
                    loss = self.train_step(self.step)
                    bad_step = torch.where(torch.isfinite(loss), bad_step, bad_step.clamp_max(self.step + 1))
                    window.add(loss, self.parts)
                    self.step += 1
                    bar.update(1)
                    boundary = [self.step % e == 0 if e else False
                                for e in (cfg.log_every, cfg.ckpt_every, cfg.grid_every, cfg.eval_every)]
                    if any(boundary) or self.step == cfg.steps:
                        self._check_finite(bad_step, last_good)
                    if boundary[0] or self.step == cfg.steps:
                        record = window.record(self.step, lr_at(cfg, self.step - 1), cfg.batch_size)
                        if self.world.is_main:
                            log_record(self.out, record, writer)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}")
                    if boundary[1] or self.step == cfg.steps:
                        self.save()
                        last_good = self.step
                    if boundary[2]:
                        self.save_grid()
                    if boundary[3] or (cfg.eval_every and self.step == cfg.steps):
                        self.evaluate(writer)
                    if self.step < cfg.steps and self._stop_requested(stop, boundary[0]):
                        self._check_finite(bad_step, last_good)
                        if self.step > last_good:
                            self.save()
                        raise KeyboardInterrupt
            finally:
                bar.close()
                if writer is not None:
                    writer.close()
        distributed.barrier()  # the final checkpoint is on disk before any rank moves on
        return self.step

    def _check_finite(self, bad_step: torch.Tensor, last_good: int) -> None:
        """Raise on every rank if any rank's loss was NaN/inf since the last check (a collective: one rank's
        NaN reaches every rank's weights through the gradient all-reduce, so none may checkpoint)."""
        first = int(distributed.min_over_ranks(bad_step))
        if first != NO_BAD_STEP:
            raise TrainingDiverged(f"loss became NaN/inf at step {first}; stopped, the last good checkpoint is "
                                   f"step {last_good} in {self.out / 'checkpoints'} (try a lower --lr or --precision fp32)")

    def _stop_requested(self, stop: "StopRequest", at_log_step: bool) -> bool:
        """Whether to stop after this step: at once for one process; under torchrun the ranks agree (a
        collective, so that every rank stops after the same step) at logging steps and every
        :data:`STOP_CHECK_EVERY` steps, well inside torchrun's 30 s between forwarding a signal and killing."""
        if self.world.size == 1:
            return stop.requested
        if not (at_log_step or self.step % STOP_CHECK_EVERY == 0):
            return False
        return bool(distributed.max_over_ranks(torch.tensor(float(stop.requested), device=self.device)))

    def evaluate(self, writer=None) -> list[dict]:
        """Evaluate EMA samples now (:class:`~diffrep.train.periodic.PeriodicEval`)."""
        return self._evaluate(self, writer)

    def save_grid(self) -> Path | None:
        """Draw the EMA's sample grid now (:func:`~diffrep.train.periodic.sample_grid`)."""
        return sample_grid(self)
