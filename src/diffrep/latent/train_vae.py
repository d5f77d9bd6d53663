"""Training an autoencoder for latent diffusion: diffusers' ``AutoencoderKL`` with the KL-regularised objective of LDM
(2112.10752, appendix G: a reconstruction term plus ``kl_weight``·KL, per image; LDM's 1e-6 by default; no perceptual
or adversarial term here: MNIST-like data has no perceptual network, and an L2 reconstruction suffices at 32×32).

The same virtues as the diffusion trainer: each step's batch, flips and posterior draws are a pure function of
``(seed, step)``, so ``--resume`` continues bit-for-bit; bf16 autocast where the device computes it natively; an EMA
whose weights are exported as a diffusers folder (``<out>/vae``) at every checkpoint; progress, ``metrics.jsonl`` and
TensorBoard.  A run folder: ``vae.json`` (config, provenance), ``checkpoints/``, ``metrics.jsonl``, ``tb/``, ``vae/``,
``reconstructions.png``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from diffrep.checkpoint import latest_checkpoint, save_checkpoint
from diffrep.data import load_dataset, save_grid, to_model_range, to_uint8
from diffrep.errors import DiffrepError
from diffrep.io import atomic_write, provenance
from diffrep.latent.autoencoder import EXPORT_DIR, build_vae, parse_latent, save_vae_folder
from diffrep.precision import resolve_precision
from diffrep.runtime import pick_device
from diffrep.train.batches import EpochSampler, step_generator
from diffrep.train.rundir import lock_run_dir, trim_metrics
from diffrep.train.schedules import ramped_decay, warmed_up

RESUMABLE = ("steps", "ckpt_every", "log_every", "keep_last", "precision")
"""Options a ``--resume`` may change."""


@dataclass
class VaeConfig:
    data: str = "mnist5k"
    image_size: int | None = None
    hflip: bool = False
    latent: str = "4x8x8"
    preset: str = "VAE-T"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    kl_weight: float = 1e-6
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    precision: str = "auto"
    seed: int = 0
    ckpt_every: int = 500
    keep_last: int = 2
    log_every: int = 25

    def validate(self) -> "VaeConfig":
        parse_latent(self.latent)
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise DiffrepError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not (self.lr > 0 and self.kl_weight >= 0 and 0 <= self.ema_decay < 1 and self.grad_clip >= 0):
            raise DiffrepError("--lr must be positive, --kl-weight and --grad-clip non-negative, --ema-decay in [0, 1)")
        return self

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE}


def kl_loss(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std²) ‖ N(0, 1)) summed over each latent, per image."""
    var = std.pow(2)
    return 0.5 * (mean.pow(2) + var - 1.0 - var.clamp_min(1e-12).log()).flatten(1).sum(1)


class VaeTrainer:
    """Trains an ``AutoencoderKL`` of ``cfg`` into ``out``; ``run()`` returns the final step."""

    def __init__(self, cfg: VaeConfig, out: Path | str, resume: bool = False, overwrite: bool = False,
                 device: str = "auto", progress: bool = True):
        self.cfg, self.out, self.progress = cfg.validate(), Path(out), progress
        self.device = pick_device(device)
        self.data = load_dataset(cfg.data, "train", cfg.image_size)
        self.shown = load_dataset(cfg.data, "test", cfg.image_size).images[:16]     # reconstructions.png's row
        torch.manual_seed(cfg.seed)
        self.vae = build_vae(cfg.preset, self.data.shape, parse_latent(cfg.latent)).to(self.device)
        self.ema = copy.deepcopy(self.vae).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.sampler = EpochSampler(len(self.data), cfg.batch_size, cfg.seed)
        self.step = 0
        self._open(resume, overwrite)
        self.precision = resolve_precision(cfg.precision, self.device, recorded=self._recorded_precision)

    def _open(self, resume: bool, overwrite: bool) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise DiffrepError(f"--out {self.out} is a file: give the path of a folder for the VAE run")
        entries = {p.name for p in self.out.iterdir()} - {".lock"} if self.out.is_dir() else set()
        self._recorded_precision = None
        if entries and "vae.json" not in entries:
            raise DiffrepError(f"--out {self.out} is a folder that is not empty and holds no VAE run: choose a new or "
                               "empty folder")
        self._lock = lock_run_dir(self.out)
        ckpt = latest_checkpoint(self.out) if entries else None
        if overwrite and resume:
            raise DiffrepError("--overwrite starts the run over and --resume continues it: pass one of them")
        if ckpt is not None and overwrite:
            import shutil

            for name in ("checkpoints", "tb", EXPORT_DIR, "metrics.jsonl", "vae.json", "reconstructions.png",
                         "reconstruction.json"):
                p = self.out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            ckpt = None
        elif ckpt is not None and not resume:
            raise DiffrepError(f"{self.out} already holds a VAE run: pass --resume to continue it, --overwrite to "
                               "start it over, or choose another --out")
        elif ckpt is None and resume:
            raise DiffrepError(f"--resume: {self.out} holds no VAE checkpoint to continue")
        if ckpt is not None:
            recorded = json.loads((self.out / "vae.json").read_text())["config"]
            diff = [k for k, v in self.cfg.identity().items() if recorded.get(k) != v]
            if diff:
                raise DiffrepError(f"--resume: {self.out} was trained with other {', '.join(diff)}; use the same "
                                   "options or a new --out")
            if ckpt.step > self.cfg.steps:
                raise DiffrepError(f"--resume --steps {self.cfg.steps}: the run is already at step {ckpt.step}")
            self._recorded_precision = recorded["precision_used"]
            self.vae.load_state_dict(ckpt.weights("model"))
            self.ema.load_state_dict(ckpt.weights("ema"))
            state = ckpt.state()
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s images in [-1, 1] (flipped where drawn) and the posterior draw's ``ε`` generator."""
        g = step_generator(self.cfg.seed, step)
        images = self.data.images[self.sampler.indices(step)]
        if self.cfg.hflip:
            flip = torch.rand(len(images), generator=g) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return to_model_range(images), g

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        x, g = self.batch(step)
        for group in self.optimizer.param_groups:
            group["lr"] = warmed_up(cfg.lr, cfg.warmup, step)
        x = x.to(self.device)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision.autocast):
            posterior = self.vae.encode(x).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
            z = mean + std * torch.randn(mean.shape, generator=g).to(self.device)
            recon = self.vae.decode(z).sample.float()
        rec = (recon - x).pow(2).flatten(1).sum(1).mean()
        kl = kl_loss(mean, std).mean()
        loss = rec + cfg.kl_weight * kl
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.vae.parameters()),
                                 1.0 - ramped_decay(cfg.ema_decay, step))
        return {"loss": loss.detach(), "mse": rec.detach() / x[0].numel(), "kl": kl.detach()}

    def run(self) -> int:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        cfg = self.cfg
        try:
            self._write_config()
            writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1)
            trim_metrics(self.out / "metrics.jsonl", self.step)
            sums: dict[str, torch.Tensor] = {}
            bar = tqdm(total=cfg.steps, initial=self.step, desc="train-vae", unit="step", disable=not self.progress)
            t0, n0 = time.perf_counter(), self.step
            self.vae.train()
            while self.step < cfg.steps:
                for k, v in self.train_step(self.step).items():
                    sums[k] = sums.get(k, 0) + v
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    n = self.step - n0
                    record = {"step": self.step, **{k: float(v) / n for k, v in sums.items()},
                              "img_per_s": n * cfg.batch_size / (time.perf_counter() - t0)}
                    if not math.isfinite(record["loss"]):
                        raise DiffrepError(f"the VAE loss became NaN/inf by step {self.step}: try a lower --lr or "
                                           "--precision fp32")
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    for k, v in record.items():
                        if k != "step":
                            writer.add_scalar(f"vae/{k}", v, self.step)
                    bar.set_postfix(mse=f"{record['mse']:.4f}")
                    sums, t0, n0 = {}, time.perf_counter(), self.step
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save()
            bar.close()
            writer.close()
            return self.step
        finally:
            self._lock.close()

    def _write_config(self) -> None:
        record = {"config": {**asdict(self.cfg), "precision_used": self.precision.name},
                  "image_shape": list(self.data.shape), "latent_shape": list(parse_latent(self.cfg.latent)),
                  "parameters": sum(p.numel() for p in self.vae.parameters()), "provenance": provenance()}
        with atomic_write(self.out / "vae.json", "w") as f:
            json.dump(record, f, indent=1)

    def save(self) -> None:
        """A checkpoint (weights, EMA, optimiser, step), the EMA exported as a diffusers folder and a grid of test
        reconstructions (top: originals, bottom: the EMA's)."""
        state = {"step": self.step, "optimizer": self.optimizer.state_dict()}
        save_checkpoint(self.out, self.step, {"model": self.vae.state_dict(), "ema": self.ema.state_dict()}, state,
                        self.cfg.identity(), self.cfg.keep_last)
        save_vae_folder(copy.deepcopy(self.ema).cpu(), self.out / EXPORT_DIR)
        with torch.no_grad():
            x = to_model_range(self.shown).to(self.device)
            recon = to_uint8(self.ema.decode(self.ema.encode(x).latent_dist.mean).sample.float().cpu())
        save_grid(torch.cat([self.shown, recon]), self.out / "reconstructions.png", nrow=16)

    def describe(self) -> str:
        params = sum(p.numel() for p in self.vae.parameters()) / 1e6
        start = f"resuming at step {self.step}" if self.step else "a new run"
        return (f"train-vae: {self.cfg.preset} ({params:.2f}M parameters), {self.data.shape} → latent "
                f"{self.cfg.latent}, {self.cfg.data} ({len(self.data):,} images) → {self.out}: {start}, "
                f"to step {self.cfg.steps}")


def reconstruction_floor(source: str | Path, dataset: str = "mnist5k", device: str = "auto") -> dict:
    """What the VAE alone costs a latent model: the reference encoder's FD_ref and accuracy of the reconstructions
    (decoded posterior means) of ``dataset``'s test split, beside those of the test images themselves (the judge's
    yardstick ``fd_ref_train_vs_test``)."""
    from diffrep.data import BUILTIN, ImageSet, load_builtin
    from diffrep.latent.space import VAESpace
    from diffrep.latent.autoencoder import load_vae
    from diffrep.reference import judge

    if dataset not in BUILTIN:
        raise DiffrepError("the reconstruction floor is measured with a reference encoder: give one of "
                           f"{', '.join(BUILTIN)}")
    test = load_builtin(dataset, "test")
    vae = load_vae(source)
    space = VAESpace(vae, device=pick_device(device))
    recon = space.decode(space.encode(test.images))
    mse = float((to_model_range(recon) - to_model_range(test.images)).pow(2).mean())
    verdict = judge(ImageSet(recon, test.labels, test.num_classes, f"{dataset}:test reconstructions"), dataset,
                    n_ref=len(test))
    return {"vae": str(source), "data": f"{dataset}:test", "n": len(test), "mse": mse, **verdict.as_dict()}
