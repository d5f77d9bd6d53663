"""Probes of frozen features: a linear probe and a k-NN classifier, over many feature sets at once.

- **Linear**: one softmax-regression head per feature set (standardised with the train
  split's mean and std), all trained together on the same shuffled mini-batches with AdamW and
  a cosine learning rate (lr 1e-2, 50 epochs); the weight decay (1e-4 … 8, see
  ``WEIGHT_DECAYS``) is chosen per feature set on 10% of the train split held out, as probing
  protocols sweep their regularisation; accuracy on the test split.
- **k-NN** (as in DINO, arXiv 2104.14294): cosine similarity, the ``k = 20`` nearest train
  features vote with weight ``exp(sim / τ)``, ``τ = 0.07``; on the raw features, and again
  after PCA whitening (:func:`knn_whitened_probe`: centred on the train mean, projected on the
  top 64 principal components of the train split, each scaled to unit variance — the whitening
  of image retrieval, so that a few high-variance directions do not decide the cosine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from diffrep.errors import DiffrepError
from diffrep.precision import Precision, resolve_precision

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 0.5, 2.0, 8.0)
WHITENED_COMPONENTS = 64


@dataclass
class ProbeSplit:
    """Train and test features of one feature set, with labels."""

    train: torch.Tensor
    test: torch.Tensor
    y_train: torch.Tensor
    y_test: torch.Tensor


def _standardise(split: ProbeSplit) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = split.train.mean(0), split.train.std(0).clamp_min(1e-6)
    return (split.train - mean) / std, (split.test - mean) / std


class SoftmaxHeads(nn.Module):
    """``H`` softmax-regression heads on one feature set, one per weight decay, computed together.

    The weight decay is AdamW's decoupled one (``p ← p·(1 − lr·wd)`` before the Adam update,
    on weights and biases), applied here per head so that one optimiser serves every head."""

    def __init__(self, dim: int, classes: int, weight_decays: tuple[float, ...], generator: torch.Generator):
        super().__init__()
        bound = 1 / math.sqrt(dim)          # nn.Linear's initialisation, from the probe's own generator
        self.weight = nn.Parameter(torch.empty(len(weight_decays), classes, dim).uniform_(-bound, bound,
                                                                                          generator=generator))
        self.bias = nn.Parameter(torch.empty(len(weight_decays), classes).uniform_(-bound, bound, generator=generator))
        self.register_buffer("weight_decay", torch.tensor(weight_decays))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N×D`` features → ``H×N×C`` logits."""
        return torch.einsum("nd,hcd->hnc", x, self.weight) + self.bias[:, None]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum over heads of each head's mean cross-entropy."""
        logits = self(x)
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)), reduction="sum") / len(y)

    @torch.no_grad()
    def decay(self, lr: float) -> None:
        keep = 1 - lr * self.weight_decay
        self.weight.mul_(keep[:, None, None])
        self.bias.mul_(keep[:, None])

    @torch.no_grad()
    def accuracies(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        return (self(x).argmax(2) == y).float().mean(1).tolist()


def _fit_heads(features: dict[object, torch.Tensor], y: torch.Tensor, decays: dict[object, tuple[float, ...]],
               classes: int, *, epochs: int, batch_size: int, lr: float, g: torch.Generator,
               desc: str | None = None) -> dict[object, SoftmaxHeads]:
    """For each feature set, one head per weight decay in ``decays[k]``; every head trained in one loop
    on the same shuffled batches (AdamW, cosine learning rate); ``desc``: a progress bar's label (none if ``None``)."""
    heads = {k: SoftmaxHeads(features[k].shape[1], classes, wds, g) for k, wds in decays.items()}
    opt = torch.optim.AdamW([p for h in heads.values() for p in h.parameters()], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(len(y) / batch_size))
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=desc is None, dynamic_ncols=True):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            loss = sum(h.loss(features[k][idx], y[idx]) for k, h in heads.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for h in heads.values():
                h.decay(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return heads


def linear_probe(splits: dict[object, ProbeSplit], *, epochs: int = 50, batch_size: int = 256, lr: float = 1e-2,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, val_fraction: float = 0.1,
                 seed: int = 0, progress: bool = False) -> dict[object, tuple[float, float]]:
    """``{feature set: (test accuracy, chosen weight decay)}`` of a linear head per feature set.

    The weight decay is chosen per feature set among ``weight_decays`` by accuracy on a held-out
    ``val_fraction`` of the train split (never the test split); the head is then retrained on
    the whole train split with it.
    """
    if not splits:
        raise DiffrepError("no feature sets to probe")
    first = next(iter(splits.values()))
    y, n = first.y_train, len(first.y_train)
    if any(not torch.equal(s.y_train, y) or not torch.equal(s.y_test, first.y_test) for s in splits.values()):
        raise DiffrepError("every feature set must be computed on the same train and test images")
    classes = int(max(y.max(), first.y_test.max())) + 1
    data = {k: _standardise(s) for k, s in splits.items()}
    g = torch.Generator().manual_seed(seed)
    fit = dict(epochs=epochs, batch_size=batch_size, lr=lr, g=g)
    chosen = {k: weight_decays[0] for k in splits}
    if len(weight_decays) > 1:
        order = torch.randperm(n, generator=g)
        n_val = max(1, int(val_fraction * n))
        val, train = order[:n_val], order[n_val:]
        heads = _fit_heads({k: data[k][0][train] for k in splits}, y[train], dict.fromkeys(splits, weight_decays),
                           classes, **fit, desc="linear probes: weight decay" if progress else None)
        for k in splits:    # the best validation accuracy; ties go to the smaller weight decay
            accuracy = dict(zip(weight_decays, heads[k].accuracies(data[k][0][val], y[val])))
            chosen[k] = max(weight_decays, key=lambda wd: (accuracy[wd], -wd))
    heads = _fit_heads({k: data[k][0] for k in splits}, y, {k: (chosen[k],) for k in splits}, classes, **fit,
                       desc="linear probes: fit" if progress else None)
    return {k: (heads[k].accuracies(data[k][1], first.y_test)[0], chosen[k]) for k in splits}


def knn_probe(split: ProbeSplit, *, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Test accuracy of temperature-weighted cosine k-NN voting."""
    if len(split.train) < k:
        raise DiffrepError(f"k-NN with k={k} needs at least {k} train features, got {len(split.train)}")
    train, test = F.normalize(split.train.float(), dim=1), F.normalize(split.test.float(), dim=1)
    classes = int(max(split.y_train.max(), split.y_test.max())) + 1
    correct = 0
    for start in range(0, len(test), chunk):
        sim, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, split.y_train[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == split.y_test[start:start + chunk]).sum())
    return correct / len(test)


def _pca_whitening(train: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, D×components projection)`` onto the top principal components of ``train``, scaled to unit variance."""
    mean = train.mean(0)
    x = train - mean
    variance, vectors = torch.linalg.eigh(x.T @ x / (len(x) - 1))      # ascending
    variance, vectors = variance.flip(0)[:components], vectors.flip(1)[:, :components]
    return mean, vectors / variance.clamp_min(1e-12).sqrt()


def knn_whitened_probe(split: ProbeSplit, *, components: int = WHITENED_COMPONENTS, **knn) -> float:
    """Test accuracy of :func:`knn_probe` on PCA-whitened features (the top ``components`` of the train split).

    The number of components is fixed, not chosen on held-out train images: a backbone trained on
    the train split (a diffusion model is) sets those images apart from unseen ones in its
    low-variance directions, which whitening amplifies, so held-out train accuracy keeps rising
    with more components while test accuracy collapses (mnist5k, UNet-S: 96% vs 64% at 256)."""
    train, test = split.train.float(), split.test.float()
    mean, projection = _pca_whitening(train, min(components, train.shape[1]))
    return knn_probe(ProbeSplit((train - mean) @ projection, (test - mean) @ projection, split.y_train, split.y_test),
                     **knn)


def probe_backbones(run: str | Path, *, data: str | None = None, backbones: list[str] = ("diffusion",),
                    blocks: str = "all", times: list[float] = (0.05, 0.1, 0.2, 0.4), pooling: str = "mean",
                    seed: int = 0, resample: bool = False, noise_draws: int = 1, normalize: bool = False,
                    encoder_weights: dict[str, str] | None = None, batch_size: int = 250, precision: str = "auto",
                    device: str = "auto", progress: bool = True, test_data: str | None = None,
                    on_start: Callable[[Precision], None] | None = None) -> list[dict]:
    """Linear and k-NN probes, one protocol, over the run's features at every (block, t) (``diffusion``) and
    over registry encoders (``reference``, ``pixels``, ``dinov2-s14``, …), trained on ``data``'s train split and
    tested on its test split (default: the run's own dataset; see :func:`~diffrep.data.labelled_split` for other
    data and ``test_data``).  ``on_start`` gets the diffusion net's precision once the run
    and the images are checked."""
    from diffrep.config import load_run_config
    from diffrep.data import labelled_split
    from diffrep.evaluation.encoders import get_encoder
    from diffrep.evaluation.features import extract_features
    from diffrep.represent.features import check_times, diffusion_features, resolve_blocks
    from diffrep.runs import check_images_fit_run, load_run

    data = data or load_run_config(run).data
    train, test = labelled_split(data, "train", test_data), labelled_split(data, "test", test_data)
    splits: dict[tuple, ProbeSplit] = {}
    for backbone in backbones:
        if backbone == "diffusion":
            net, process, _, info, space, condition = load_run(run, "ema", device)
            check_images_fit_run(train.images, info, run, data)
            check_times(process, list(times))
            chosen = resolve_precision(precision, next(net.parameters()).device)
            if on_start is not None:
                on_start(chosen)
            kw = dict(blocks=resolve_blocks(blocks, net.tap_names), times=list(times), pooling=pooling, seed=seed,
                      resample=resample, noise_draws=noise_draws, normalize=normalize, batch_size=batch_size, autocast=chosen.autocast,
                      progress=progress, space=space, condition=condition)
            f_train, f_test = diffusion_features(net, process, train.images, **kw), \
                diffusion_features(net, process, test.images, **kw)
            for (block, t), f in f_train.items():
                splits["diffusion", block, t] = ProbeSplit(f, f_test[block, t], train.labels, test.labels)
        else:
            encoder = get_encoder(backbone, (encoder_weights or {}).get(backbone), data=data)
            f_train, f_test = (extract_features(encoder, s.images, progress=progress).features for s in (train, test))
            splits[backbone, None, None] = ProbeSplit(f_train, f_test, train.labels, test.labels)
    linear = linear_probe(splits, seed=seed, progress=progress)
    return [{"backbone": k[0], "block": k[1], "t": k[2], "dim": s.train.shape[1], "linear": linear[k][0],
             "weight_decay": linear[k][1], "knn": knn_probe(s), "knn_white": knn_whitened_probe(s)}
            for k, s in splits.items()]


def plot_heatmap(rows: list[dict], png: str | Path) -> None:
    """Accuracy of the diffusion features over (block, t): linear, k-NN and whitened k-NN side by side (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        raise DiffrepError("--heatmap needs matplotlib: pip install 'diffrep[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrep.io import atomic_write

    rows = [r for r in rows if r["backbone"] == "diffusion"]
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    times = sorted({r["t"] for r in rows})
    probes = ("linear", "knn", "knn_white")
    fig, axes = plt.subplots(1, len(probes), figsize=(2.2 + 1.1 * len(times) * len(probes), 1 + 0.35 * len(blocks)),
                             squeeze=False)
    for ax, probe in zip(axes[0], probes):
        grid = torch.full((len(blocks), len(times)), float("nan"))
        for r in rows:
            grid[blocks.index(r["block"]), times.index(r["t"])] = 100 * r[probe]
        im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
        for r in rows:
            ax.text(times.index(r["t"]), blocks.index(r["block"]), f"{100 * r[probe]:.1f}", ha="center",
                    va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(times)), [f"{t:g}" for t in times])
        ax.set_yticks(range(len(blocks)), blocks)
        ax.set_xlabel("t")
        ax.set_title(f"{probe} probe accuracy (%)", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_write(png) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
