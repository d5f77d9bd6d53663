"""Self-labels (self-guided diffusion, Hu et al., arXiv 2210.06462): k-means cluster ids of image features stand in for
class labels, so data without annotations gets a class-conditional model and classifier-free guidance.

``--condition clusters:k=20,source=S`` clusters the training images' features from ``S``: a metric encoder's
(``pixels``, ``dinov2-s14``, ``inception``, …; ``reference`` is a *supervised* classifier, so its clusters leak the
labels: a control, not self-supervision) or a trained diffrep run's own features, ``run:PATH`` (its middle block at
``t``, mean-pooled; an unconditional run makes the labels fully unsupervised).  Features are L2-normalised and
clustered by scikit-learn's k-means (10 restarts, seeded).  The run stores the ids in ``self_labels.json`` (a resume
reads them back) and records in ``model.json`` how well they agree with the true labels, where there are any:
normalised mutual information and the adjusted Rand index.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from diffrep import distributed
from diffrep.data import ImageSet
from diffrep.errors import DiffrepError
from diffrep.io import atomic_write

FILE = "self_labels.json"


def parse_condition(spec: str) -> dict | None:
    """``labels`` → ``None``; ``clusters:k=20,source=S[,t=0.3]`` and ``embedding:source=S[,t=0.3]``
    (:mod:`~diffrep.represent.embeddings`) → their options, with ``kind``; else a one-line error."""
    if spec == "labels":
        return None
    kind, _, rest = spec.partition(":")
    options = dict(item.partition("=")[::2] for item in filter(None, rest.split(",")))
    allowed = {"clusters": {"k", "source", "t"}, "embedding": {"source", "t"}}.get(kind)
    if allowed is None or set(options) - allowed or (kind == "clusters" and "k" not in options):
        raise DiffrepError(f"--condition {spec!r}: give labels, clusters:k=K[,source=pixels|ENCODER|run:PATH][,t=T] "
                           "or embedding:source=pixels|ENCODER|run:PATH[,t=T]")
    try:
        k, t = int(options.get("k", 2)), float(options.get("t", 0.3))
    except ValueError:
        raise DiffrepError(f"--condition {spec!r}: k must be a whole number and t a number") from None
    if k < 2:
        raise DiffrepError(f"--condition {spec!r}: k must be at least 2")
    source = options.get("source", "pixels")
    return {"kind": kind, **({"k": k} if kind == "clusters" else {}), "source": source,
            **({"t": t} if source.startswith("run:") else {})}


def source_features(images: torch.Tensor, source: str, t: float, device: str | torch.device,
                    progress: bool) -> torch.Tensor | None:
    """Features of ``uint8`` images from an encoder name or ``run:PATH`` (the run's middle block at ``t``).  Under
    torchrun every rank calls it (an encoder's extraction is sharded over the ranks) and rank 0 gets the features
    (``None`` elsewhere)."""
    if source.startswith("run:"):
        from diffrep.represent.features import diffusion_features
        from diffrep.runs import load_run

        run = load_run(source[4:], device=str(device))
        if run.image_condition is not None:
            raise DiffrepError("--condition clusters:source=run: a DiffuseVAE run's features need its VAE; use another "
                               "run")
        block = getattr(run.net, "middle_tap", run.net.tap_names[len(run.net.tap_names) // 2])
        t = t * run.process.t_max          # t: a fraction of the process's range (σ_max for EDM)
        return diffusion_features(run.net, run.process, images, blocks=(block,), times=[t], progress=progress,
                                  space=run.space)[block, t]
    from diffrep.evaluation.encoders import get_encoder
    from diffrep.evaluation.features import extract_features

    encoded = extract_features(get_encoder(source), images, device=device, progress=progress)
    return None if encoded is None else encoded.features


def cluster(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means ids of L2-normalised ``features`` (scikit-learn, 10 restarts, ``seed``)."""
    from sklearn.cluster import KMeans

    x = F.normalize(features.float(), dim=1).numpy()
    return torch.from_numpy(KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)).long()


def agreement(clusters: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """NMI and ARI of cluster ids against true labels (empty where the data has none)."""
    if labels is None:
        return {}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"nmi": round(float(normalized_mutual_info_score(labels, clusters)), 4),
            "ari": round(float(adjusted_rand_score(labels, clusters)), 4)}


def self_labelled(data: ImageSet, spec: str, out: Path, seed: int, device: str | torch.device,
                  progress: bool = True) -> tuple[ImageSet, dict | None]:
    """``data`` with cluster ids for labels and the record ``model.json`` keeps (``None`` for ``--condition labels``).
    The ids come from ``out/self_labels.json`` when a resumed run has it; else every rank extracts the features with
    the others, rank 0 clusters them and writes the ids, and every rank receives them."""
    options = parse_condition(spec)
    if options is None or options["kind"] != "clusters":
        return data, None
    saved = Path(out) / FILE
    if saved.is_file():
        stored = json.loads(saved.read_text())
        ids = torch.tensor(stored["labels"], dtype=torch.long)
        if len(ids) != len(data):
            raise DiffrepError(f"{saved} holds {len(ids)} labels for {len(data)} images: the data changed since the "
                               "run started; start a new run")
    else:
        features = source_features(data.images, options["source"], options.get("t", 0.3), device, progress)
        ids = cluster(features, options["k"], seed) if distributed.current().is_main else None
        ids = distributed.broadcast_from_main(ids)
    record = {"name": "clusters", **{k: v for k, v in options.items() if k != "kind"}, **agreement(ids, data.labels)}
    if not saved.is_file() and distributed.current().is_main:
        with atomic_write(saved, "w") as f:
            json.dump({**record, "labels": ids.tolist()}, f)
    return dataclasses.replace(data, labels=ids, num_classes=options["k"]), record
