"""Image-to-image translation by inversion: CycleDiffusion's DPM-Encoder (arXiv 2210.05559, §3).

The encoder turns an image into the latent code of a stochastic (ancestral) sampler under a *source* model:
the start ``x_S = x0 + s_S·z`` and, for each step, the noise ``z_i`` that makes the source model's step land
where the true posterior ``q(x_next | x, x0)`` drew it.  Decoding the same code with the source model gives
the image back; decoding it with a *target* model (other data, or another class) gives its translation,
without paired data or training.  ``s_start`` below the process's maximum keeps more of the source (as
SDEdit's start time); both models run in the same VE coordinates (:class:`~diffrep.inverse.prior.Prior`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from diffrep.errors import DiffrepError
from diffrep.inverse.prior import Prior
from diffrep.inverse.solvers.noise import RowGenerators, randn
from diffrep.precision import Precision, resolve_precision


def _posterior(x0: torch.Tensor, x: torch.Tensor, s: float, s_next: float) -> tuple[torch.Tensor, float]:
    """Mean and std of the DDPM posterior ``q(x_{s_next} | x_s, x0)`` in VE form."""
    ratio = (s_next / s) ** 2
    return x0 + ratio * (x - x0), s_next * math.sqrt(1 - ratio)


@torch.no_grad()
def dpm_encode(source: Prior, x0: torch.Tensor, levels: list[float],
               generator: torch.Generator | RowGenerators) -> list[torch.Tensor]:
    """The latent code ``[x_S, z_1, …]`` of images ``x0`` (in [-1, 1]) under the source model on ``levels``."""
    x = x0 + levels[0] * randn(x0, generator)
    code = [x]
    for s, s_next in zip(levels[:-1], levels[1:]):
        if s_next == 0:
            break
        mean_true, std = _posterior(x0, x, s, s_next)
        x_next = mean_true + std * randn(x0, generator)
        mean_model, _ = _posterior(source(x, s).x0, x, s, s_next)
        code.append((x_next - mean_model) / std)
        x = x_next
    return code


@torch.no_grad()
def dpm_decode(target: Prior, code: list[torch.Tensor], levels: list[float]) -> torch.Tensor:
    """Run the target model's ancestral sampler with the noises of ``code``; the last step returns its x̂0."""
    x = code[0]
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0 = target(x, s).x0
        if s_next == 0:
            return x0
        mean, std = _posterior(x0, x, s, s_next)
        x = mean + std * code[i + 1]
    return x



def translation_labels(mode: str, labels: torch.Tensor | None, n: int, num_classes: int) -> torch.Tensor | None:
    """``none`` (the null class), ``true`` (the inputs' classes), ``shift:K`` (class + K mod C) or a class index."""
    if mode == "none":
        return None
    if num_classes == 0:
        raise DiffrepError(f"labels {mode!r}: the run is unconditional (trained without labels); use none")
    head, _, arg = mode.partition(":")
    if head in ("true", "shift"):
        if labels is None:
            raise DiffrepError(f"labels {mode!r}: the data has no labels; use none or a class index")
        try:
            return (labels + (int(arg) if head == "shift" else 0)) % num_classes
        except ValueError:
            raise DiffrepError(f"labels {mode!r}: expected shift:K with a whole number K, e.g. shift:1") from None
    if not mode.isdigit() or int(mode) >= num_classes:
        raise DiffrepError(f"labels {mode!r}: use none, true, shift:K or a class index 0…{num_classes - 1}")
    return torch.full((n,), int(mode))


def translate_run(source_run: Path, target_run: Path, *, data: str = "mnist5k:test", n: int = 100,
                  source_labels: str = "true", target_labels: str = "none", s_start: float = 80.0, steps: int = 50,
                  seed: int = 0, batch_size: int = 100, precision: str = "auto", device: str = "auto",
                  progress: bool = True, out: Path | None = None, grid: Path | None = None, overwrite: bool = False,
                  on_start: Callable[[Precision], None] | None = None) -> dict:
    """Translate ``n`` images of ``data`` from the source run to the target run; returns the metrics.

    The translations are judged by the reference encoder of the target run's data when that is built in
    (class agreement with the source labels, FD_ref to its test split), else by that of ``data``."""
    from diffrep.data import BUILTIN, save_grid, to_model_range, to_uint8
    from diffrep.evaluation import restoration
    from diffrep.inverse.run import fd_ref_to_test, load_inputs, reference_judge, refuse_existing
    from diffrep.io import save_npz
    from diffrep.rng import keyed_generator
    from diffrep.runs import check_images_fit_run, load_run, refuse_latent

    refuse_existing(out, grid, overwrite=overwrite)
    if steps < 2 or s_start <= 0:
        raise DiffrepError(f"--steps {steps} / --s-start {s_start}: need at least 2 steps and a positive start level")
    inputs, builtin = load_inputs(data, n)
    runs = [load_run(r, "ema", device) for r in (source_run, target_run)]
    for r, run in zip((source_run, target_run), runs):
        check_images_fit_run(inputs.images, run.info, r, data)
        refuse_latent(run.space, r, run.image_condition)
    conds = [translation_labels(mode, inputs.labels, n, run.info["num_classes"])
             for mode, run in zip((source_labels, target_labels), runs)]
    dev = next(runs[0].net.parameters()).device
    chosen = resolve_precision(precision, dev)
    if on_start is not None:
        on_start(chosen)
    denoisers = [run.process.denoiser(run.net, chosen.autocast) for run in runs]
    levels = Prior(denoisers[0]).levels(steps, s_max=min([s_start] + [Prior(d).max_level() for d in denoisers]))
    translated, rebuilt = [], []
    for j in tqdm(range(-(-n // batch_size)), desc="translate", unit="batch", disable=not progress):
        index = torch.arange(j * batch_size, min(n, (j + 1) * batch_size))
        source, target = (Prior(d, None if c is None else c[index].to(dev)) for d, c in zip(denoisers, conds))
        code = dpm_encode(source, to_model_range(inputs.images[index]).to(dev), levels,
                          RowGenerators([keyed_generator(seed, int(i)) for i in index]))
        translated.append(to_uint8(dpm_decode(target, code, levels).clamp(-1, 1).cpu()))
        rebuilt.append(to_uint8(dpm_decode(source, code, levels).clamp(-1, 1).cpu()))
    translated, rebuilt = torch.cat(translated), torch.cat(rebuilt)
    metrics = {"n": n, "steps": steps, "s_start": levels[0], "source_labels": source_labels,
               "target_labels": target_labels, "precision": chosen.name,
               "ssim_to_source": float(restoration.ssim(translated, inputs.images).mean()),
               "reconstruction_psnr": float(restoration.psnr(rebuilt, inputs.images).mean())}
    judged_on = runs[1].config.data if runs[1].config.data in BUILTIN else builtin
    judge = reference_judge(judged_on)
    if judge is not None:
        features, logits = judge(translated)
        predicted = logits.argmax(1)
        metrics["judged_on"] = judged_on
        metrics["fd_ref"] = fd_ref_to_test(features, judged_on)
        if inputs.labels is not None:
            metrics["source_class_kept"] = float((predicted == inputs.labels).float().mean())
        if conds[1] is not None:
            metrics["target_class_accuracy"] = float((predicted == conds[1]).float().mean())
    if out is not None:
        save_npz(out, arr_0=translated.permute(0, 2, 3, 1).numpy(), source=inputs.images.permute(0, 2, 3, 1).numpy(),
                 metrics=np.array(json.dumps(metrics)))
    if grid is not None:
        rows = min(10, n)
        save_grid(torch.stack([im for i in range(rows) for im in (inputs.images[i], rebuilt[i], translated[i])]), grid,
                  nrow=6)
    return metrics
