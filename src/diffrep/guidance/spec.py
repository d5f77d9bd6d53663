"""One spelling for every guidance: ``--guidance KIND[:OPT=VAL,…]``, repeatable, applied in the order given (the first
wraps the run's denoiser, the next wraps that).

- ``cfg:1.5`` or ``cfg:scale=1.5,lo=0.1,hi=0.9``: classifier-free guidance, with a guidance interval (``--cfg`` and
  ``--cfg-interval`` remain its short spelling);
- ``auto:ckpt=400,w=2`` or ``auto:run=runs/small[@400],w=2``: autoguidance by a weaker model;
- ``classifier:path=clf.safetensors,scale=2[,lo=0,hi=0.5]``: ADM classifier guidance by a ``diffrep train-classifier``
  classifier, within a t range if given (several, one per range: PPAP's experts);
- ``elucd:path=clean.safetensors,scale=2[,beta=3,tau=0.5,gamma=0.3]``: EluCD by a clean classifier
  (``diffrep train-classifier --clean``).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from diffrep.errors import DiffrepError

OPTIONS: dict[str, dict[str, type]] = {
    "cfg": {"scale": float, "lo": float, "hi": float},
    "auto": {"w": float, "ckpt": int, "run": str},
    "classifier": {"path": str, "scale": float, "lo": float, "hi": float},
    "elucd": {"path": str, "scale": float, "beta": float, "tau": float, "gamma": float},
}
"""Each kind's options and their types."""


def parse_guidance(spec: str) -> tuple[str, dict]:
    """``"auto:ckpt=400,w=2"`` → ``("auto", {"ckpt": 400, "w": 2.0})``; a one-line error naming the fix."""
    kind, _, rest = spec.partition(":")
    if kind not in OPTIONS:
        raise DiffrepError(f"--guidance {spec!r}: unknown kind {kind!r}; choose {', '.join(OPTIONS)} (KIND:OPT=VAL,…)")
    if kind == "cfg" and rest and "=" not in rest:
        rest = f"scale={rest}"
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in OPTIONS[kind]:
            raise DiffrepError(f"--guidance {spec!r}: {kind} takes {', '.join(k + '=' for k in OPTIONS[kind])}")
        try:
            options[key] = OPTIONS[kind][key](value)
        except ValueError:
            raise DiffrepError(f"--guidance {spec!r}: {key}={value} is not a {OPTIONS[kind][key].__name__}") from None
        if isinstance(options[key], float) and not math.isfinite(options[key]):
            raise DiffrepError(f"--guidance {spec!r}: {key} must be finite")
    return kind, options


class GuidanceChain:
    """Wrappers applied in order to a denoiser; ``needs_grad`` when any of them takes gradients (classifier
    guidance), so that sampling keeps autograd available."""

    def __init__(self, wrappers: list[Callable], needs_grad: bool = False):
        self.wrappers, self.needs_grad = wrappers, needs_grad

    def __call__(self, denoiser):
        for wrap in self.wrappers:
            denoiser = wrap(denoiser)
        return denoiser


def scale_range(info: dict) -> tuple[float, float] | None:
    """The guidance scales a guidance-distilled student was trained on (``model.json``'s ``distill`` record); ``None``
    for any other run."""
    record = info.get("distill") or {}
    return tuple(record["scale_range"]) if "scale_range" in record else None


def build_guidance(specs: list[str], run: Path | str, info: dict, labels: torch.Tensor | None,
                   device: torch.device, autocast: bool) -> GuidanceChain | None:
    """The chain of ``specs`` for the loaded ``run`` (``info``: :func:`~diffrep.runs.load_run`'s), sampling
    ``labels``."""
    from diffrep.guidance.auto import Autoguidance, weak_model
    from diffrep.guidance.cfg import cfg_wrapper
    from diffrep.guidance.classifier import ClassifierGuidance, load_classifier
    from diffrep.guidance.elucd import EluCDGuidance, smoothed

    wrappers, needs_grad = [], False
    for spec in specs:
        kind, o = parse_guidance(spec)
        if kind in ("cfg", "classifier", "elucd") and labels is None:
            raise DiffrepError(f"--guidance {spec}: {kind} guidance steers towards class labels; this run is "
                               "unconditional or --labels none was given (autoguidance needs no labels)")
        if kind in ("classifier", "elucd") and labels.is_floating_point():
            raise DiffrepError(f"--guidance {spec}: this run is conditioned on embeddings, not classes; guide it with "
                               "cfg or auto")
        interval = (o.get("lo", 0.0), o.get("hi", math.inf)) if {"lo", "hi"} & set(o) else None
        if kind == "cfg":
            wrappers.append(cfg_wrapper(o.get("scale", 1.5), interval, scale_range(info)))
        elif kind == "auto":
            weak = weak_model(run, info, o.get("ckpt"), o.get("run"), device)
            wrappers.append(lambda d, net=weak, w=o.get("w", 2.0):
                            Autoguidance(d, d.process.denoiser(net, autocast), w))
        else:
            if "path" not in o:
                raise DiffrepError(f"--guidance {spec}: give path=FILE (a classifier of diffrep train-classifier)")
            classifier, _ = load_classifier(o["path"], info, "noisy" if kind == "classifier" else "clean")
            if kind == "classifier":
                wrappers.append(partial(ClassifierGuidance, classifier=classifier.to(device),
                                        scale=o.get("scale", 1.0), interval=interval))
            else:
                beta = o.get("beta", 5.0 if info["process"].startswith("edm") else 3.0)
                wrappers.append(partial(EluCDGuidance, classifier=smoothed(classifier, beta).to(device),
                                        scale=o.get("scale", 1.0), tau_ratio=o.get("tau", 0.5),
                                        gamma=o.get("gamma", 0.3)))
            needs_grad = True
    return GuidanceChain(wrappers, needs_grad) if wrappers else None
