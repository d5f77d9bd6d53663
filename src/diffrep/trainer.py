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
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from diffrep import distributed
from diffrep.checkpoint import latest_checkpoint, save_checkpoint
from diffrep.config import RESUMABLE_FIELDS, TrainConfig, config_diff, load_run_config, save_config
from diffrep.data import BUILTIN, ImageSet, load_builtin, load_dataset, save_grid, to_model_range, to_uint8
from diffrep.errors import DiffrepError
from diffrep.io import atomic_write
from diffrep.loss import Batch, denoising_loss
from diffrep.nets import NULL_LABEL, UNet, build_net
from diffrep.plugins import Plugin, WarmStart, build_plugins, plugin_net_options
from diffrep.precision import Precision, resolve_precision
from diffrep.processes import make_process
from diffrep.rng import BatchDraws, keyed_generator
from diffrep.samplers import get_sampler, initial_noise

BATCH_STREAM, EPOCH_STREAM, WARMUP_STREAM, PLUGIN_STREAM = 0, 1, 2, 3
"""Streams of :func:`step_generator`: the batch's draws, the epoch permutation, the draws of a plug-in's
warm-up batches (:meth:`Plugin.initialize`), the plug-ins' draws of the step."""


def step_generator(seed: int, step: int, stream: int = BATCH_STREAM) -> torch.Generator:
    """The generator for one step's draws: a pure function of ``(seed, step, stream)``."""
    return keyed_generator(seed, step, stream)


class EpochSampler:
    """Stateless data order: epoch ``e`` is ``randperm(N)`` seeded by ``(seed, e)``; step ``s`` takes the next ``B``."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.n, generator=step_generator(self.seed, epoch, EPOCH_STREAM))}
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.n)
            take = min(self.batch_size - len(out), self.n - offset)
            out.extend(self._perm(epoch)[offset: offset + take].tolist())
        return torch.tensor(out, dtype=torch.long)


def draw_batch(data: ImageSet, indices: torch.Tensor, cfg: TrainConfig, process, step: int,
               stream: int = BATCH_STREAM) -> Batch:
    """The global batch of step ``step`` with all its randomness."""
    g = step_generator(cfg.seed, step, stream)
    x0 = to_model_range(data.images[indices])
    n = x0.shape[0]
    if cfg.hflip:
        flip = torch.rand(n, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    t = process.sample_time(n, g)
    noise = torch.randn(x0.shape, generator=g)
    cond = None
    if cfg.class_conditional and data.labels is not None:
        drop = torch.rand(n, generator=g) < cfg.label_dropout
        cond = torch.where(drop, NULL_LABEL, data.labels[indices])
    return Batch(x0, cond, t, noise)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to ``device``; to a GPU through pinned memory without blocking, so the host draws the
    next batch while the GPU still runs this step (PyTorch keeps the pinned buffer until the copy ends)."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def _slice(batch: Batch, sl: slice, device: torch.device) -> Batch:
    return Batch(_to_device(batch.x0[sl], device), None if batch.cond is None else _to_device(batch.cond[sl], device),
                 _to_device(batch.t[sl], device), _to_device(batch.noise[sl], device))


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU (``cuda:LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", distributed.current().local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DiffrepError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffrepError(f"--device {name}: this PyTorch build sees no CUDA GPU; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DiffrepError(f"--device {name}: there are {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def use_deterministic_kernels() -> None:
    """Deterministic kernels: on a GPU cuBLAS with a fixed workspace, deterministic cuDNN algorithms
    and scatter-adds, math attention; on the CPU, where eager kernels always are, Inductor's compiled
    scatter-adds (the label embedding's gradient otherwise adds its rows in thread order).  The same
    inputs then give the same bits.  An op with no deterministic kernel warns (PyTorch names it)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant (DiT / SiT / REPA), so a run can be extended by raising ``--steps``."""
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay used after optimiser step ``step``; 0 (a plain copy) before ``--ema-start``.

    After it the decay ramps up as ``min(ema_decay, (1 + k) / (10 + k))``, ``k`` = steps since
    ``ema_start`` (the ``num_updates`` warm-up of TensorFlow's ExponentialMovingAverage), so a
    short run's EMA is not dominated by the initial weights: at decay 0.999 a constant
    decay would still hold 30% of the initialisation after 1,200 steps.
    """
    if step < cfg.ema_start:
        return 0.0
    k = step - cfg.ema_start
    return min(cfg.ema_decay, (1 + k) / (10 + k))


def build_model(cfg: TrainConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The net of ``cfg``, with the architecture options its plug-ins ask for (e.g. ``selfcond``)."""
    c, h, _ = image_shape
    net = build_net(cfg.model, image_size=h, in_channels=c, num_classes=num_classes, **plugin_net_options(cfg.plugins),
                    **({"grad_checkpoint": True} if cfg.grad_checkpoint else {}))
    if cfg.channels_last:
        if not isinstance(net, UNet):
            raise DiffrepError("--channels-last is for the U-Net (a DiT has no convolutions after its patch embedding)")
        net = net.to(memory_format=torch.channels_last)
    return net


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter],
                   head_params: list[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """AdamW with the chosen kernel: ``fused`` (one kernel for all tensors), ``foreach`` or ``for-loop``.

    Plug-in heads get a parameter group of their own: under FSDP the net's parameters are
    ``DTensor`` shards, and one multi-tensor kernel cannot mix them with plain tensors."""
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[cfg.adamw_impl]
    groups = [{"params": list(params)}] + ([{"params": list(head_params)}] if head_params else [])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay, **impl)


class CompiledOrEager(nn.Module):
    """``torch.compile(module)``, or ``module`` itself once compiling has failed (warned once).

    Compilation happens at the first call (and on new shapes); if the backend is missing or fails
    (no C++ compiler, an unsupported op), training goes on in eager mode instead of stopping.
    Inductor's layout optimisation (its own channels-last conversion of convolution graphs) is off:
    under CPU bf16 autocast (torch 2.13) it zeroed the gradients of every U-Net level below the top
    one (a test compares with eager).  In channels-last memory the bug remains either way, so the
    trainer refuses ``--channels-last`` with ``--compile`` on the CPU.

    Calls guard on the modules' hooks: by default Dynamo does not, so a net with plug-in hooks
    (CEP's perturbation, UMD's masking) compiled in a process that had compiled a net of the same
    class without them reused that graph and silently trained without the plug-in (and the reverse).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, options={"layout_optimization": False})
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
                    return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 — any compiler failure falls back to eager
                self.failed = True
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "continuing without --compile", stacklevel=2)
        return self.module(*args, **kwargs)


class TrainingDiverged(DiffrepError):
    pass


class Trainer:
    """Trains ``cfg`` into ``out``; ``run()`` returns the final step."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool = False, plugins: list[Plugin] | None = None,
                 device: str = "auto", progress: bool = True):
        self.world = distributed.current()
        if cfg.batch_size % (self.world.size * cfg.grad_accum):
            raise DiffrepError(f"--batch-size {cfg.batch_size} must be divisible by processes × --grad-accum "
                               f"= {self.world.size} × {cfg.grad_accum}")
        self.out, self.progress = Path(out), progress and self.world.is_main
        self.device = pick_device(device)
        self.precision = self._choose_precision(cfg, resume)
        self.cfg = cfg = dataclasses.replace(cfg, precision=self.precision.name)     # the run records the choice
        if cfg.compile and cfg.channels_last and self.device.type == "cpu":
            raise DiffrepError("--channels-last with --compile on the CPU: Inductor (torch 2.13) computes wrong U-Net "
                               "gradients in that layout; drop --channels-last (it is slower on the CPU anyway)")
        if cfg.deterministic:
            use_deterministic_kernels()
        self.plugins = nn.ModuleList(build_plugins(cfg.plugins) if plugins is None else plugins)
        self.data = load_dataset(cfg.data, "train", cfg.image_size)
        self.num_classes = self.data.num_classes if (cfg.class_conditional and self.data.labels is not None) else 0
        self.process = make_process(cfg.process, cfg.prediction, cfg.schedule, cfg.time_sampling)
        torch.manual_seed(cfg.seed)
        self.net = build_model(cfg, self.data.shape, self.num_classes).to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        for p in self.plugins:
            p.setup(self.net, self.ema, self.process, self.data.shape)
        for p in self.plugins:
            p.check_taps({t for other in self.plugins if other is not p for t in other.taps})
        self.plugins.to(self.device)
        self.sampler = EpochSampler(len(self.data), cfg.batch_size, cfg.seed)
        self.autocast = self.precision.autocast
        self.step = 0
        self._eval_sets = None
        ckpt = self._open_run_dir(resume)
        if not resume:
            self._initialize_plugins()      # on the whole net, before it is wrapped or sharded
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
        if resume:
            self._load(ckpt)
        self._write_run_files()

    def _choose_precision(self, cfg: TrainConfig, resume: bool) -> Precision:
        """``cfg.precision`` resolved on this device; ``auto`` on a resume keeps the precision the run recorded."""
        config = self.out / "config.yaml"
        recorded = load_run_config(self.out).precision if resume and config.is_file() else None
        chosen = resolve_precision(cfg.precision, self.device, recorded=recorded)
        if recorded is not None and chosen.name != recorded:
            warnings.warn(f"{self.out} was trained in {recorded}; continuing in {chosen.name}, as asked (the "
                          "continuation is not bit-identical to an uninterrupted run)", stacklevel=3)
        return chosen

    # ---- run directory -------------------------------------------------------------
    def _open_run_dir(self, resume: bool):
        """Check the run folder before any work: the checkpoint to resume from (``None`` for a new run)."""
        ckpt = latest_checkpoint(self.out)
        if resume:
            if ckpt is None:
                fix = ("start a new run with another --out" if (self.out / "config.yaml").exists()
                       else "run without --resume to start a new run")
                raise DiffrepError(f"--resume: no usable checkpoint in {self.out / 'checkpoints'}; {fix}")
            old = load_run_config(self.out).identity()
            stored = {k: v for k, v in ckpt.manifest["identity"].items() if k not in RESUMABLE_FIELDS}  # made resumable since
            diff = config_diff(stored, self.cfg.identity()) or config_diff(old, self.cfg.identity())
            if diff:
                raise DiffrepError(f"--resume: the checkpoint in {self.out} was trained with a different config ({'; '.join(diff)}); "
                                   "use the same options or a new --out")
        elif ckpt is not None or (self.out / "config.yaml").exists():
            raise DiffrepError(f"{self.out} already holds a run: pass --resume to continue it, or choose another --out")
        else:
            self.cfg.refuse_ignored_options()
        distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
        return ckpt

    def _write_run_files(self) -> None:
        if self.world.is_main:
            save_config(self.cfg, self.out / "config.yaml")
            with atomic_write(self.out / "model.json", "w") as f:
                json.dump({"image_shape": list(self.data.shape), "num_classes": self.num_classes,
                           "model": self.cfg.model, "process": self.process.describe()}, f, indent=1)
            self._trim_metrics()
        distributed.barrier()

    def _initialize_plugins(self) -> None:
        """A fresh run's plug-in initialisation (ERW's warm-up), before step 0; the EMA starts from its result.

        Every rank runs it on the same global batches; rank 0's weights are then sent to all, so the
        ranks start identical even where GPU kernels are not bit-reproducible."""
        warm = WarmStart(self.warmup_batch, lambda params: make_optimizer(self.cfg, params), self.autocast, self.progress)
        if not any([p.initialize(self.net, warm) for p in self.plugins]):
            return
        distributed.broadcast_tensors(list(self.net.state_dict().values()) + list(self.plugins.state_dict().values()))
        self.ema.load_state_dict(self.net.state_dict())

    def warmup_batch(self, k: int) -> Batch:
        """The ``k``-th batch of a plug-in's warm-up: the global batch, on the device, with its own draws."""
        batch = draw_batch(self.data, self.sampler.indices(k), self.cfg, self.process, k, WARMUP_STREAM)
        return _slice(batch, slice(None), self.device)

    def _trim_metrics(self) -> None:
        """Drop log lines past the resumed step, so a resumed run's log has each step once."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        with atomic_write(path, "w") as f:
            f.write("".join(ln + "\n" for ln in lines))

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
        return save_checkpoint(self.out, self.step, weights, state, self.cfg.identity(), self.cfg.keep_last)

    @torch.no_grad()
    def sampling_net(self) -> nn.Module:
        """The EMA net to sample from: itself, or under FSDP an unsharded copy on every rank (collective),
        so that each rank can sample its own share without waiting on the others."""
        if not self.sharded:
            return self.ema
        with torch.random.fork_rng(devices=[]):     # building a net draws initial weights: keep training's RNG
            net = build_model(self.cfg, self.data.shape, self.num_classes).to(self.device)
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
        batch = draw_batch(self.data, self.sampler.indices(step), cfg, self.process, step)
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
            mb = _slice(batch, rows, self.device)
            draws = BatchDraws(step_generator(cfg.seed, step, PLUGIN_STREAM), cfg.batch_size, rows)
            for p in self.plugins:
                mb = p.transform_batch(mb, step, draws)
            last = k == cfg.grad_accum - 1
            with self._gradient_sync(last):
                out = denoising_loss(denoiser, mb, taps)
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
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        cfg = self.cfg
        if self.step >= cfg.steps:
            return self.step
        writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1) if self.world.is_main else None
        bad_step = torch.full((), NO_BAD_STEP, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        parts_sum: dict[str, torch.Tensor] = {}
        last_good = self.step
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress, dynamic_ncols=True)
        t0, n0 = time.perf_counter(), self.step
        self.net.train()
        with StopRequest() as stop:
            try:
                while self.step < cfg.steps:
                    loss = self.train_step(self.step)
                    bad_step = torch.where(torch.isfinite(loss), bad_step, bad_step.clamp_max(self.step + 1))
                    loss_sum += loss
                    for k, v in self.parts.items():
                        parts_sum[k] = parts_sum.get(k, 0) + v
                    self.step += 1
                    bar.update(1)
                    boundary = [self.step % e == 0 if e else False
                                for e in (cfg.log_every, cfg.ckpt_every, cfg.grid_every, cfg.eval_every)]
                    if any(boundary) or self.step == cfg.steps:
                        self._check_finite(bad_step, last_good)
                    if boundary[0] or self.step == cfg.steps:
                        dt = time.perf_counter() - t0
                        n = self.step - n0
                        means = {k: float(distributed.mean_over_ranks(v)) / n
                                 for k, v in {"loss": loss_sum, **dict(sorted(parts_sum.items()))}.items()}
                        record = {"step": self.step, **means, "lr": lr_at(cfg, self.step - 1),
                                  "img_per_s": n * cfg.batch_size / dt}
                        if self.world.is_main:
                            self._log(record, writer)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}")
                        loss_sum.zero_()
                        parts_sum.clear()
                        t0, n0 = time.perf_counter(), self.step
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

    def _log(self, record: dict, writer) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step":
                writer.add_scalar(f"train/{k}", v, record["step"])

    def evaluate(self, writer=None) -> list[dict] | None:
        """Evaluate ``eval_samples`` class-balanced EMA samples (``grid_sampler``, ``grid_steps``) against the
        test split of a built-in dataset (else the training data); sampling is sharded over ranks.

        Appends to ``eval.jsonl``, TensorBoard ``eval/<encoder>/<value>`` and redraws ``eval.png``.
        """
        from diffrep.evaluate import EvalSet, evaluate, load_encoders, plot_curves
        from diffrep.features import FeatureCache
        from diffrep.generate import generate, make_labels

        cfg = self.cfg
        if self._eval_sets is None:
            ref = load_builtin(cfg.data, "test") if cfg.data in BUILTIN else self.data
            self._eval_sets = (EvalSet(f"{cfg.data}:test" if cfg.data in BUILTIN else cfg.data, ref.images),
                               EvalSet(f"{cfg.data}:train", self.data.images),
                               load_encoders(cfg.eval_encoders.split(",")))
        ref, train, encoders = self._eval_sets
        labels = make_labels("balanced", cfg.eval_samples, self.num_classes) if self.num_classes else None
        chunks = generate(self.sampling_net(), self.process, self.data.shape, cfg.eval_samples, sampler=cfg.grid_sampler,
                          steps=cfg.grid_steps, seed=cfg.seed, labels=labels, autocast=self.autocast,
                          chunks=lambda j: j % self.world.size == self.world.rank, progress=False)
        images = distributed.broadcast_from_main(distributed.gather_chunks(chunks))
        rows = evaluate(EvalSet(f"step {self.step}", images), ref, metric_names=cfg.eval_metrics.split(","),
                        encoders=encoders, train=train, device=str(self.device), cache=FeatureCache(),
                        cache_generated=False, progress=False)
        if self.world.is_main:
            record = {"step": self.step, **{f"{r['encoder']}/{k}": v for r in rows for k, v in r["values"].items()}}
            with open(self.out / "eval.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if writer is not None and k != "step":
                    writer.add_scalar(f"eval/{k}", v, self.step)
            plot_curves(self.out / "eval.jsonl", self.out / "eval.png")
        return rows

    @torch.no_grad()
    def save_grid(self, n: int = 64) -> Path | None:
        """A PNG grid of EMA samples with fixed noise (class ``i mod C`` in cell ``i``), drawn by rank 0.

        Every rank calls it: under FSDP gathering the EMA weights is collective."""
        net = self.sampling_net()
        if not self.world.is_main:
            return None
        cond = torch.arange(n, device=self.device) % self.num_classes if self.num_classes else None
        ts = self.process.time_grid(self.cfg.grid_steps)
        x = initial_noise(self.process, (n, *self.data.shape), ts[0], torch.Generator().manual_seed(self.cfg.seed), self.device)
        x = get_sampler(self.cfg.grid_sampler)(self.process.denoiser(net, self.autocast), x, ts, cond=cond)
        path = self.out / "grids" / f"step_{self.step:07d}.png"
        save_grid(to_uint8(x.cpu()), path, nrow=self.num_classes or None)
        return path


NO_BAD_STEP = 2**62
"""``bad_step``'s value while every loss has been finite."""
STOP_CHECK_EVERY = 5
"""Under torchrun, how often (in steps) the ranks agree on a stop request (a host sync each time)."""


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM during training, as a flag the loop reads between steps.

    The loop then checkpoints the finished step and stops (``KeyboardInterrupt``), so a checkpoint
    never holds a half-done step (an optimiser update without its step count).  A second signal
    stops at once, without a checkpoint: the last one on disk is intact.  Repeats within
    :attr:`REPEAT_S` seconds count as the first (torchrun forwards the signal a worker may also get
    from the terminal or from Slurm).  Outside the main thread (where Python cannot install
    handlers) signals keep their usual effect.
    """

    REPEAT_S = 2.0

    def __init__(self):
        self.requested = False
        self._first: float | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self._first is not None:
            if time.monotonic() - self._first > self.REPEAT_S:
                raise KeyboardInterrupt
            return
        self.requested, self._first = True, time.monotonic()
        if distributed.current().is_main:
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                  "(signal again to stop at once, without one)", file=sys.stderr, flush=True)


def load_run(run_dir: Path | str, weights: str = "ema", device: str = "auto") -> tuple[nn.Module, object, TrainConfig, dict]:
    """Load a trained run for sampling/probing: ``(net, process, config, model_info)``; ``weights``: ``ema`` or ``model``."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    info = json.loads((run_dir / "model.json").read_text())
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise DiffrepError(f"{run_dir} has no usable checkpoint yet: train it first (diffrep train ... --out {run_dir})")
    net = build_model(cfg, tuple(info["image_shape"]), info["num_classes"])
    net.load_state_dict(ckpt.weights(weights))
    info = {**info, "step": ckpt.step, "weights": weights, "config": asdict(cfg)}
    return net.to(pick_device(device)).eval(), make_process(cfg.process, cfg.prediction, cfg.schedule, cfg.time_sampling), cfg, info


def check_images_fit_run(images: torch.Tensor, info: dict, run: Path | str, data: str) -> None:
    """Refuse images whose C×H×W differs from what the run was trained on (``info``: :func:`load_run`'s)."""
    if tuple(images.shape[1:]) != tuple(info["image_shape"]):
        raise DiffrepError(f"{data} images are {tuple(images.shape[1:])} (C×H×W) but {run} was trained on "
                           f"{tuple(info['image_shape'])}: pass --data with images of the run's size")


__all__ = ["Trainer", "TrainingDiverged", "check_images_fit_run", "load_run", "lr_at", "step_generator"]
