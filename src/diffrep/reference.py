"""The reference encoder: a small CNN classifier of the embedded data, diffrep's offline judge.

It gives two numbers for generated digits: **accuracy** (does a class-conditional
sample show its class?) and **FD_ref** (Fréchet distance in its 128-d penultimate
features).  Weights ship in ``diffrep/assets/reference-<dataset>.safetensors`` with a
JSON card holding the command that reproduces them and the test accuracy.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.data import ImageSet, balanced_subset, load_builtin
from diffrep.errors import DiffrepError
from diffrep.evaluation.metrics import frechet_distance

FEATURE_DIM = 128


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class ReferenceCNN(nn.Module):
    """conv32×2 → pool → conv64×2 → pool → conv128 → global mean → fc128 (features) → fc10 (logits).

    Input: ``uint8 N×C×H×W`` images (any H, W ≥ 8); scaled to [0, 1] and centred at 0.5.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(_conv(in_channels, 32), _conv(32, 32), nn.MaxPool2d(2),
                                  _conv(32, 64), _conv(64, 64), nn.MaxPool2d(2), _conv(64, 128))
        self.fc = nn.Linear(128, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of float images in [-0.5, 0.5]."""
        return F.relu(self.fc(self.body(x).mean(dim=(2, 3))))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``uint8`` images."""
        return self.embed(images.float() / 255.0 - 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _asset(dataset: str) -> Path:
    return Path(str(resources.files("diffrep") / "assets" / f"reference-{dataset}.safetensors"))


def load_reference(dataset: str = "mnist5k", path: Path | str | None = None) -> ReferenceCNN:
    """The committed reference encoder for a built-in dataset (or one saved at ``path``: safetensors, or a plain
    state dict read with ``weights_only``)."""
    from diffrep.evaluation.encoders.weights import read_state_dict

    if path and not Path(path).is_file():
        raise DiffrepError(f"reference encoder weights file not found: {path}")
    path = Path(path) if path else _asset(dataset)
    if not path.is_file():
        raise DiffrepError(f"no committed reference encoder for {dataset!r}: train one with "
                           f"`diffrep reference --data {dataset} --out {path}`")
    sd, _ = read_state_dict(path, "", "reference encoder")
    if not {"body.0.0.weight", "head.weight"} <= set(sd):
        raise DiffrepError(f"{path} is not a reference-encoder weights file: it lacks body.0.0.weight and head.weight")
    net = ReferenceCNN(in_channels=sd["body.0.0.weight"].shape[1], num_classes=sd["head.weight"].shape[0])
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise DiffrepError(f"{path} is not a reference-encoder weights file: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()


def _augment(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero padding)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=g)
    return torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(n)])


def train_reference(dataset: str = "mnist5k", epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                    seed: int = 0, progress: bool = True) -> tuple[ReferenceCNN, dict]:
    """Train the reference CNN on a built-in dataset's train split; report its test accuracy."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    train, test = load_builtin(dataset, "train"), load_builtin(dataset, "test")
    net = ReferenceCNN(train.shape[0], train.num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = -(-len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc="reference", disable=not progress):
        net.train()
        perm = torch.randperm(len(train), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size: (i + 1) * batch_size]
            loss = F.cross_entropy(net(_augment(train.images[idx].float(), g)), train.labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    card = {"dataset": dataset, "train_images": len(train), "test_images": len(test), "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed, "test_accuracy": accuracy(net, test),
            "train_seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    return net, card


@torch.no_grad()
def encode(net: ReferenceCNN, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and logits of ``uint8`` images, in float32."""
    feats, logits = [], []
    for chunk in images.split(batch_size):
        f = net.features(chunk)
        feats.append(f)
        logits.append(net.head(f))
    return torch.cat(feats), torch.cat(logits)


def accuracy(net: ReferenceCNN, data: ImageSet) -> float:
    _, logits = encode(net, data.images)
    return float((logits.argmax(1) == data.labels).float().mean())


def _check_compatible(images: torch.Tensor, reference: ImageSet) -> None:
    if images.shape[1:] != reference.images.shape[1:]:
        raise DiffrepError(f"samples are {tuple(images.shape[1:])} (C×H×W) but the {reference.name} reference encoder "
                           f"expects {tuple(reference.images.shape[1:])}: judge samples of a model trained on that data")


@dataclass
class Judgement:
    n: int
    accuracy: float | None
    fd_ref: float
    fd_ref_train_vs_test: float
    n_ref: int

    @property
    def fd_ratio(self) -> float:
        return self.fd_ref / self.fd_ref_train_vs_test

    def as_dict(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "fd_ref": self.fd_ref,
                "fd_ref_train_vs_test": self.fd_ref_train_vs_test, "fd_ratio": self.fd_ratio, "n_ref": self.n_ref}


def judge(samples: ImageSet, dataset: str = "mnist5k", n_ref: int = 1000) -> Judgement:
    """Accuracy (if ``samples`` carry labels) and FD_ref against ``n_ref`` class-balanced test images (fewer
    where the smallest test class allows fewer: ``digits``).

    The yardstick ``fd_ref_train_vs_test`` is FD_ref between ``n_ref`` class-balanced train
    images and the same test images: what a perfect generator of this size would score.
    """
    net, test, f_test, yardstick = _reference_side(dataset, n_ref)
    _check_compatible(samples.images, test)
    if len(samples) < 2:
        raise DiffrepError(f"need at least 2 samples to judge, got {len(samples)}")
    f_gen, logits = encode(net, samples.images)
    acc = None if samples.labels is None else float((logits.argmax(1) == samples.labels).float().mean())
    return Judgement(len(samples), acc, frechet_distance(f_gen, f_test), yardstick, len(test))


@functools.lru_cache(maxsize=4)
def _reference_side(dataset: str, n_ref: int) -> tuple[ReferenceCNN, ImageSet, torch.Tensor, float]:
    """The judge's fixed side, computed once per process: the reference encoder, the class-balanced test images,
    their features (read from the feature cache after the first call) and the train-vs-test yardstick FD_ref."""
    net = load_reference(dataset)
    test, train = load_builtin(dataset, "test"), load_builtin(dataset, "train")
    smallest_class = int(torch.bincount(test.labels).min())
    test = test.subset(balanced_subset(test.labels, min(n_ref, smallest_class * test.num_classes)))
    train = train.subset(balanced_subset(train.labels, len(test)))
    f_test = _cached_features(net, test.images)
    return net, test, f_test, frechet_distance(_cached_features(net, train.images), f_test)


def _cached_features(net: ReferenceCNN, images: torch.Tensor) -> torch.Tensor:
    """:func:`encode`'s features through the feature cache, keyed by the weights and the images' bytes; a cache
    that cannot be written (read-only home) only costs the time."""
    import hashlib

    from diffrep.evaluation.encoders import Encoded, state_dict_sha256
    from diffrep.evaluation.features import FeatureCache, images_sha256

    cache = FeatureCache()
    key = hashlib.sha256(f"judge|{state_dict_sha256(net)}|{images_sha256(images)}".encode()).hexdigest()
    hit = cache.load(key)
    if hit is not None and hit.features.shape[0] == len(images):
        return hit.features
    features, _ = encode(net, images)
    try:
        cache.save(key, Encoded(features), {"what": "the judge's reference features", "n": len(images)})
    except (OSError, DiffrepError):
        pass
    return features


def save_reference(net: ReferenceCNN, card: dict, out: Path) -> None:
    from safetensors.torch import save

    from diffrep.io import atomic_write

    out = Path(out)
    with atomic_write(out) as f:
        f.write(save({k: v.contiguous() for k, v in net.state_dict().items()}))
    with atomic_write(out.with_suffix(".json"), "w") as f:
        json.dump(card, f, indent=1)

