"""Representation-conditioned generation: the net is conditioned on an image's embedding instead of its class
(Graikos et al., "Learned representation-guided diffusion models for large-image generation", CVPR 2024; the
embedding as the condition of RCG, arXiv 2312.03701).

``--condition embedding:source=S[,t=T]`` embeds every training image once with ``S`` — a metric encoder (``pixels``,
``dinov2-s14``, ``inception``, …; ``reference``, a supervised classifier, as a control) or a trained diffrep run's own
features (``run:PATH``, its middle block at ``t``) — L2-normalises the embeddings and keeps them in the run
(``embeddings.safetensors``; a resume reads them back).  Label dropout replaces an embedding by the zero vector, the
null condition, so classifier-free guidance works as with classes.  Sampling conditions on the embeddings of training
images (class-balanced where the data has labels: ``arr_1`` holds the source images' labels, so the judge's accuracy
says how much of the class the embedding carries) or of given images: variations (``diffrep sample --like``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from diffrep import distributed
from diffrep.data import ImageSet
from diffrep.errors import DiffrepError
from diffrep.io import atomic_write
from diffrep.represent.clusters import parse_condition, source_features

FILE = "embeddings.safetensors"


def embedding_options(spec: str) -> dict | None:
    """The options of ``--condition embedding:…``; ``None`` for any other condition."""
    options = parse_condition(spec)
    return options if options is not None and options["kind"] == "embedding" else None


def embed(images: torch.Tensor, options: dict, device: str | torch.device, progress: bool) -> torch.Tensor:
    """L2-normalised float32 embeddings of ``uint8`` images, on every rank (extracted collectively under torchrun)."""
    features = source_features(images, options["source"], options.get("t", 0.3), device, progress)
    features = None if features is None else F.normalize(features.float().cpu(), dim=1)
    return distributed.broadcast_from_main(features)


def embedding_dim(options: dict, image_shape: tuple[int, ...], device: str | torch.device) -> int:
    """The size of ``options``' embeddings, measured on two blank images (the net is built before the data is
    embedded, which waits until the run folder is checked)."""
    return embed(torch.zeros(2, *image_shape, dtype=torch.uint8), options, device, False).shape[1]


def embedded(data: ImageSet, spec: str, out: Path, device: str | torch.device,
             progress: bool = True) -> tuple[torch.Tensor | None, dict | None]:
    """Every training image's embedding and the record ``model.json`` keeps (``(None, None)`` for other conditions):
    read from ``out/embeddings.safetensors`` where a resumed run has it, else extracted and saved by rank 0."""
    from safetensors.torch import load_file, save

    options = embedding_options(spec)
    if options is None:
        return None, None
    saved = Path(out) / FILE
    if saved.is_file():
        embeddings = load_file(str(saved))["embeddings"]
        if len(embeddings) != len(data):
            raise DiffrepError(f"{saved} holds {len(embeddings)} embeddings for {len(data)} images: the data changed "
                               "since the run started; start a new run")
    else:
        embeddings = embed(data.images, options, device, progress)
        if distributed.current().is_main:
            with atomic_write(saved) as f:
                f.write(save({"embeddings": embeddings.contiguous()}))
    record = {"name": "embedding", "source": options["source"], "dim": embeddings.shape[1],
              **({"t": options["t"]} if "t" in options else {})}
    return embeddings, record


def sampling_embeddings(run: Path | str, info: dict, n: int, labels: str, seed: int, device: str | torch.device,
                        like: Path | str | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(conditions N×D, labels N or None)`` to sample an embedding-conditioned run: the embeddings of the images of
    ``like`` (image ``i`` of the samples varies image ``i mod m``), else of training images — class-balanced
    (``labels="balanced"``, where the data has labels) or random; ``labels="none"``: the null condition."""
    from diffrep.data import load_dataset

    record = info["condition"]
    if like is not None:
        images = load_dataset(str(like), "train")
        if tuple(images.shape) != tuple(info["image_shape"]):
            raise DiffrepError(f"--like images are {tuple(images.shape)} (C×H×W) but the run was trained on "
                               f"{tuple(info['image_shape'])}")
        which = torch.arange(n) % len(images)
        cond = embed(images.images, record, device, False)[which]
        return cond, None if images.labels is None else images.labels[which]
    if labels == "none":
        return None, None
    if labels not in ("balanced", "random"):
        raise DiffrepError(f"--labels {labels}: an embedding-conditioned run samples from balanced or random training "
                           "images' embeddings (or --like IMAGES), or none")
    from safetensors.torch import load_file

    stored = load_file(str(Path(run) / FILE))["embeddings"]
    data = load_dataset(info["config"]["data"], "train", info["config"]["image_size"])
    g = torch.Generator().manual_seed(seed)
    if labels == "balanced" and data.labels is not None:
        classes = torch.unique(data.labels)
        which = torch.stack([_pick(data.labels, classes[i % len(classes)], g) for i in range(n)])
    else:
        which = torch.randint(0, len(stored), (n,), generator=g)
    return stored[which], None if data.labels is None else data.labels[which]


def _pick(labels: torch.Tensor, c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    members = (labels == c).nonzero().flatten()
    return members[torch.randint(0, len(members), (), generator=g)]


def condition_sizes(spec: str, class_conditional: bool, data: ImageSet, device: str | torch.device) -> tuple[int, int]:
    """``(classes, embedding size)`` of the net a run of ``--condition spec`` trains: the data's classes (0 where it
    has none or ``--unconditional``), ``k`` self-labels, or an embedding's size (and no classes)."""
    options = parse_condition(spec)
    if options is None:
        return (data.num_classes if class_conditional and data.labels is not None else 0), 0
    if options["kind"] == "clusters":
        return options["k"], 0
    return 0, embedding_dim(options, data.shape, device)


def conditioned(data: ImageSet, spec: str, out: Path, seed: int, device: str | torch.device,
                progress: bool = True) -> tuple[ImageSet, torch.Tensor | None, dict | None]:
    """A new or resumed run's data (with self-labels for ``clusters:``), its embeddings (for ``embedding:``) and the
    condition's record for ``model.json`` (``None`` for the data's own labels)."""
    from diffrep.represent.clusters import self_labelled

    data, record = self_labelled(data, spec, out, seed, device, progress)
    embeddings, embedding = embedded(data, spec, out, device, progress)
    return data, embeddings, record or embedding
