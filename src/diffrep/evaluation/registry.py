"""The metric registry: each metric declares what it needs and how it is computed from encoded sets.

Kinds: ``distribution`` metrics compare sets of features (FD, KID, PRDC, …); ``restoration`` metrics
compare images pair by pair (restoration i with truth i: PSNR, SSIM) and need no encoder.  An unknown
metric is an error, never a fall-through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from diffrep.errors import DiffrepError
import torch

from diffrep.evaluation import metrics, restoration
from diffrep.evaluation.encoders import Encoded

NEEDS = ("reference", "reference_or_stats", "train", "logits", "pairs")
"""What a metric may need: reference images' features, reference features or ADM statistics (mu, sigma),
training images' features, the encoder's class logits, or generated and reference images in pairs."""


@dataclass
class MetricInputs:
    """Encoded sets for one encoder: generated, reference (``None`` for statistics only), training; and the
    reference's ADM statistics when FD should use them (Inception only).  Restoration metrics read the
    images themselves: ``pairs`` holds ``(generated, reference)`` ``uint8`` images in matching order."""

    gen: Encoded | None
    ref: Encoded | None
    train: Encoded | None
    ref_stats: tuple[np.ndarray, np.ndarray] | None
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    needs: frozenset[str]
    compute: Callable[[MetricInputs, dict], metrics.MetricResult]
    summary: str


def _fd(x: MetricInputs, o: dict) -> metrics.MetricResult:
    if x.ref_stats is not None:
        return metrics.fd_from_stats(x.gen.features, *x.ref_stats)
    return metrics.fd(x.gen.features, x.ref.features, reference_sqrtm=o["reference_sqrtm"])


def _paired(name: str, per_image: Callable) -> Callable[[MetricInputs, dict], metrics.MetricResult]:
    def compute(x: MetricInputs, o: dict) -> metrics.MetricResult:
        values = per_image(*x.pairs)
        return metrics.MetricResult({name: float(values.mean()), f"{name}_std": float(values.std())},
                                    {"n": len(values), "data_range": "uint8 scaled to [0, 1]"})
    return compute


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fd", "distribution", frozenset({"reference_or_stats"}), _fd,
           "Fréchet distance (FID with Inception; arXiv 1706.08500)"),
    Metric("fd_inf", "distribution", frozenset({"reference"}),
           lambda x, o: metrics.fd_infinity(x.gen.features, x.ref.features), "FD extrapolated to infinite samples "
           "(arXiv 1911.07023)"),
    Metric("kid", "distribution", frozenset({"reference"}),
           lambda x, o: metrics.kid(x.gen.features, x.ref.features, subset_size=o["kid_subset_size"]),
           "kernel inception distance (arXiv 1801.01401)"),
    Metric("is", "distribution", frozenset({"logits"}), lambda x, o: metrics.inception_score(x.gen.logits),
           "Inception score (arXiv 1606.03498)"),
    Metric("prdc", "distribution", frozenset({"reference"}),
           lambda x, o: metrics.prdc(x.gen.features, x.ref.features, k_pr=o["k_pr"], k_dc=o["k_dc"]),
           "precision, recall (arXiv 1904.06991), density, coverage (arXiv 2002.09797)"),
    Metric("vendi", "distribution", frozenset(), lambda x, o: metrics.vendi(x.gen.features),
           "Vendi diversity score (arXiv 2210.02410)"),
    Metric("authpct", "distribution", frozenset({"train"}),
           lambda x, o: metrics.authenticity(x.gen.features, x.train.features),
           "share of authentic samples (arXiv 2102.08921)"),
    Metric("ct", "distribution", frozenset({"train", "reference"}),
           lambda x, o: metrics.ct_score(x.gen.features, x.train.features, x.ref.features),
           "C_T data-copying test (arXiv 2004.05675)"),
    Metric("swd", "distribution", frozenset({"reference"}),
           lambda x, o: metrics.sliced_wasserstein(x.gen.features, x.ref.features),
           "sliced Wasserstein distance"),
    Metric("psnr", "restoration", frozenset({"pairs"}), _paired("psnr", restoration.psnr),
           "peak signal-to-noise ratio (dB) of image i against reference image i"),
    Metric("ssim", "restoration", frozenset({"pairs"}), _paired("ssim", restoration.ssim),
           "structural similarity (Wang et al. 2004) of image i against reference image i"),
)}


def get_metric(name: str) -> Metric:
    """The registered metric ``name``, or a one-line error listing them."""
    if name not in METRICS:
        raise DiffrepError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}")
    return METRICS[name]
