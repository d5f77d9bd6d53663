"""Evaluation: many metrics over many encoders, on image sets from anywhere (dgm-eval, arXiv 2306.04675).

Inputs (:func:`load_eval_set`): an image folder, an ``.npz`` in the ADM layout (``arr_0``
images and/or reference statistics ``mu``/``sigma``), a run directory (its
``samples.npz``), or a built-in split such as ``mnist5k:test``.

:func:`evaluate` encodes each set once per encoder (through the feature cache), computes
the metrics and returns one row per (encoder, metric) holding the numbers and what they
were computed on: encoder spec (weights hash, resize mode, layer), n, k, …
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffrep import distributed
from diffrep.data import BUILTIN, images_from_array, load_builtin, load_folder, read_npz
from diffrep.errors import DiffrepError
from diffrep.evaluation.encoders import Encoder, encoder_base, get_encoder
from diffrep.evaluation.features import FeatureCache, extract_features
from diffrep.evaluation.registry import MetricInputs, get_metric

DEFAULT_METRICS = ("fd", "kid", "prdc")


@dataclass
class EvalSet:
    """Images (``uint8 N×C×H×W``) and/or precomputed Inception statistics ``(mu, sigma)``."""

    name: str
    images: torch.Tensor | None
    stats: tuple[np.ndarray, np.ndarray] | None = None


def _load_npz(path: Path, key: str = "arr_0") -> EvalSet:
    arrays = read_npz(path)
    if key != "arr_0" and key not in arrays:
        raise DiffrepError(f"{path} has no array {key!r} (found {sorted(arrays)})")
    images = images_from_array(path, arrays[key], key) if key in arrays else None
    stats = (arrays["mu"], arrays["sigma"]) if {"mu", "sigma"} <= arrays.keys() else None
    if images is None and stats is None:
        raise DiffrepError(f"{path} has neither images 'arr_0' nor statistics 'mu'/'sigma' (found {sorted(arrays)}): "
                           "pass an ADM-layout .npz")
    return EvalSet(str(path) if key == "arr_0" else f"{path}:{key}", images, stats if key == "arr_0" else None)


def load_eval_set(spec: str, image_size: int | None = None) -> EvalSet:
    """``mnist5k:test`` | ``digits:train`` | a built-in name (its test split) | an ``.npz`` (``file.npz:KEY`` picks
    another array, e.g. ``restore.npz:truth``) | a run dir | a folder."""
    name, _, split = spec.partition(":")
    if name in BUILTIN:
        return EvalSet(f"{name}:{split or 'test'}", load_builtin(name, split or "test").images)
    path, key = Path(spec), "arr_0"
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".npz"):
        path, key = Path(head), tail
    if path.suffix == ".npz":
        if not path.is_file():
            raise DiffrepError(f"{path} does not exist")
        return _load_npz(path, key)
    if (path / "config.yaml").is_file():
        samples = path / "samples.npz"
        if not samples.is_file():
            raise DiffrepError(f"run {spec} has no samples.npz yet: run `diffrep sample {spec} --out {samples}` first")
        return _load_npz(samples)
    if path.is_dir():
        return EvalSet(str(path), load_folder(path, image_size).images)
    raise DiffrepError(f"cannot evaluate {spec!r}: pass a folder of images, an .npz, a run directory or one of "
                       f"{', '.join(f'{b}:test' for b in BUILTIN)}")


def _check_metrics(names: list[str], gen: EvalSet, ref: EvalSet, train: EvalSet | None) -> None:
    needs = {name: get_metric(name).needs for name in names}
    if gen.images is None:
        raise DiffrepError(f"{gen.name} holds statistics only; the generated set must be images")
    for s in (gen, ref, train):
        if s is not None and s.images is not None and len(s.images) == 0:
            raise DiffrepError(f"{s.name} is empty")
    need_images = sorted(m for m, n in needs.items() if "reference" in n)
    if ref.images is None and need_images:
        raise DiffrepError(f"{ref.name} holds statistics only (mu/sigma): only fd can use it, not {', '.join(need_images)}")
    paired = [m for m, n in needs.items() if "pairs" in n]
    if paired and (ref.images is None or ref.images.shape != gen.images.shape):
        raise DiffrepError(f"{', '.join(paired)} compare image i of {gen.name} with image i of {ref.name}: pass two sets "
                           "of the same size and order, e.g. restore.npz restore.npz:truth")
    missing_train = [m for m, n in needs.items() if "train" in n]
    if missing_train and train is None:
        raise DiffrepError(f"{', '.join(missing_train)} compare samples with the training set: pass --train "
                           "(e.g. --train mnist5k:train)")


def _check_shapes(encoder: Encoder, sets: list[EvalSet]) -> None:
    shapes = {tuple(s.images.shape[1:]) for s in sets if s.images is not None}
    if encoder.spec.input_size is None and len(shapes) > 1:
        raise DiffrepError(f"the {encoder.spec.name} encoder takes images at their own size, and the sets differ "
                           f"({sorted(shapes)}, C×H×W): resize them to one size or use an encoder with an input size")


def evaluate(gen: EvalSet, ref: EvalSet, *, metric_names: list[str], encoders: list[Encoder],
             train: EvalSet | None = None, batch_size: int = 100, dtype: str = "fp32", device: str = "cpu",
             cache: FeatureCache | None = None, cache_generated: bool = True, progress: bool = True,
             reference_sqrtm: bool = False, ref_stats: bool = True, k_pr: int = 3, k_dc: int = 5,
             kid_subset_size: int = 1000) -> list[dict] | None:
    """One row per (encoder, metric): ``{"encoder", "metric", "values", "params", "encoder_spec", "seconds"}``.

    Under torchrun every rank encodes its share; rank 0 computes the metrics and returns the rows
    (``None`` on the other ranks).  ``cache_generated=False`` caches only the reference and training
    features (for samples that are never evaluated twice, as during training).
    """
    _check_metrics(metric_names, gen, ref, train)
    opts = {"reference_sqrtm": reference_sqrtm, "ref_stats": ref_stats, "k_pr": k_pr, "k_dc": k_dc,
            "kid_subset_size": kid_subset_size}
    rows = [_paired_row(name, gen, ref) for name in metric_names if get_metric(name).kind == "restoration"]
    metric_names = [name for name in metric_names if get_metric(name).kind != "restoration"]
    for encoder in encoders if metric_names else []:
        if ref.images is None and encoder.spec.name != "inception":
            raise DiffrepError(f"{ref.name} holds only Inception statistics (mu/sigma): evaluate it with --encoders "
                               "inception, or pass reference images")
        sets = [gen, ref] + ([train] if train is not None else [])
        _check_shapes(encoder, sets)
        encoded = [None if s.images is None else
                   extract_features(encoder, s.images, batch_size=batch_size, dtype=dtype, device=device,
                                    cache=cache if (s is not gen or cache_generated) else None, progress=progress)
                   for s in sets]
        if not distributed.current().is_main:
            continue
        g, r, t = encoded[0], encoded[1], encoded[2] if train is not None else None
        use_stats = ref.stats is not None and encoder.spec.name == "inception" and (r is None or ref_stats)
        if use_stats and encoder.spec.resize != "bilinear-tf":
            warnings.warn(f"{ref.name}'s mu/sigma are Inception statistics as the ADM evaluator (the TF graph) "
                          f"computes them, but the generated images are resized by {encoder.spec.resize!r}: pass "
                          "--resize bilinear-tf for an FID comparable with them", stacklevel=2)
        inputs = MetricInputs(g, r, t, ref.stats if use_stats else None)
        for metric in metric_names:
            if "logits" in get_metric(metric).needs and g.logits is None:
                rows.append({"encoder": encoder.spec.name, "metric": metric, "values": {},
                             "skipped": f"the {encoder.spec.name} encoder has no class logits"})
                continue
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = get_metric(metric).compute(inputs, opts)
            for w in caught:
                warnings.warn(f"{encoder.spec.name} {metric}: {w.message}", stacklevel=2)
            rows.append({"encoder": encoder.spec.name, "metric": metric, "values": result.values,
                         "params": {**result.params, "dtype": dtype, "gen": gen.name, "ref": ref.name,
                                    **({"train": train.name} if train is not None else {})},
                         "encoder_spec": encoder.spec.as_dict(), "seconds": round(time.perf_counter() - start, 3),
                         "warnings": [str(w.message) for w in caught]})
    return rows if distributed.current().is_main else None


def _paired_row(metric: str, gen: EvalSet, ref: EvalSet) -> dict:
    """A restoration metric's row: computed on the images themselves, by no encoder."""
    start = time.perf_counter()
    result = get_metric(metric).compute(MetricInputs(None, None, None, None, (gen.images, ref.images)), {})
    return {"encoder": "pixels", "metric": metric, "values": result.values,
            "params": {**result.params, "gen": gen.name, "ref": ref.name}, "encoder_spec": None,
            "seconds": round(time.perf_counter() - start, 3), "warnings": []}


def load_encoders(names: list[str], weights: dict[str, str] | None = None,
                  resize_mode: str | None = None, data: str | None = None) -> list[Encoder]:
    """Encoders by name; ``weights`` maps a name to a local weights file; ``data``: the reference data's spec (picks
    the ``reference`` encoder of a built-in dataset)."""
    weights = weights or {}
    return [get_encoder(n, weights.get(encoder_base(n)), resize_mode, data) for n in names]


def _fmt(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def format_table(rows: list[dict]) -> str:
    """A metric × encoder table of the rows' values."""
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        for k, v in r["values"].items():
            cells.setdefault(k, {})[r["encoder"]] = _fmt(v)
    width = max([len(k) for k in cells] + [6])
    cols = [max(len(e), 10) for e in encoders]
    head = f"{'metric':{width}s}  " + "  ".join(f"{e:>{c}s}" for e, c in zip(encoders, cols))
    lines = [head, "-" * len(head)]
    for k, by_encoder in cells.items():
        lines.append(f"{k:{width}s}  " + "  ".join(f"{by_encoder.get(e, '—'):>{c}s}" for e, c in zip(encoders, cols)))
    return "\n".join(lines)


def plot_curves(jsonl: Path, png: Path) -> None:
    """One panel per logged value of ``eval.jsonl`` against step, written atomically (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        warnings.warn("eval.png needs matplotlib: pip install 'diffrep[plot]'", stacklevel=2)
        return
    import json

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrep.io import atomic_write

    records = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    keys = [k for k in records[-1] if k != "step"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), marker="o")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_write(png) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
