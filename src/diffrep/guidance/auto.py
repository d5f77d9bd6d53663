"""Autoguidance (Karras et al., arXiv 2406.02507): guide a model with a weaker version of itself.

``D_w = D_weak + w·(D − D_weak)``: the weak model is an earlier checkpoint of the same run (``auto:ckpt=400``) or a
smaller run on the same data and process (``auto:run=runs/small`` or ``runs/small@400``).  Both are evaluated with the
same condition (the paper guides a conditional model with a conditional weak one), so unlike CFG it needs no
unconditional branch and works for unconditional runs too.  The paper's w for ImageNet is 2.1–2.25; 1.5–2.5 is the
range to sweep.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffrep.errors import DiffrepError
from diffrep.processes import Denoiser, Prediction


class Autoguidance:
    """The denoiser ``D_weak + w·(D − D_weak)`` (x0 and ε alike); ``weak`` is the weak model's denoiser."""

    def __init__(self, denoiser, weak: Denoiser, scale: float):
        self.denoiser, self.weak, self.scale = denoiser, weak, scale
        self.process = denoiser.process

    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor | None = None, taps: tuple[str, ...] = ()) -> Prediction:
        strong = self.denoiser(x, t, cond, taps)
        if self.scale == 1.0:
            return strong
        weak = self.weak(x, t, cond)
        w = self.scale
        return Prediction(weak.x0 + w * (strong.x0 - weak.x0), weak.eps + w * (strong.eps - weak.eps), strong.hidden)


def weak_model(run: Path | str, info: dict, ckpt: int | None = None, other: str | None = None,
               device: str | torch.device = "cpu"):
    """The weak model's net: checkpoint ``ckpt`` of ``run``, or the run ``other`` (``PATH`` or ``PATH@STEP``); a
    one-line error where it does not fit ``run`` (``info``: the guided run's ``model.json``), saying what differs."""
    from diffrep.runs import load_run

    if (ckpt is None) == (other is None):
        raise DiffrepError("--guidance auto: give ckpt=STEP (an earlier checkpoint of this run) or run=PATH[@STEP] "
                           "(a weaker run of the same data and process)")
    source, step = (Path(run), ckpt) if other is None else _run_at(other)
    weak = load_run(source, "ema", str(device), step=step)
    guided = {"process": info["process"], "x0 shape": list(info.get("x0_shape", info["image_shape"])),
              "classes": info["num_classes"], "space": info.get("space"),
              "image condition": info.get("image_condition")}
    found = {"process": weak.info["process"], "x0 shape": list(weak.x0_shape), "classes": weak.info["num_classes"],
             "space": weak.info.get("space"), "image condition": weak.info.get("image_condition")}
    differs = [f"{k} {found[k]} ≠ {guided[k]}" for k in guided if found[k] != guided[k]]
    if differs:
        raise DiffrepError(f"--guidance auto: {source} cannot guide {run}: {'; '.join(differs)} (the weak model must "
                           "be trained on the same data, space and process)")
    if weak.image_condition is not None:
        raise DiffrepError("--guidance auto: autoguidance of a DiffuseVAE run is not supported (the weak model would "
                           "need the same VAE sample)")
    if other is None and step >= info["step"]:
        raise DiffrepError(f"--guidance auto: ckpt={step} is not earlier than the guided checkpoint (step "
                           f"{info['step']}): give an earlier step")
    return weak.net


def _run_at(spec: str) -> tuple[Path, int | None]:
    path, _, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if step and not step.isdigit():
        raise DiffrepError(f"--guidance auto:run={spec}: write PATH or PATH@STEP (a whole step number)")
    return Path(path), int(step) if step else None
