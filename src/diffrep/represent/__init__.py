"""The model as a representation learner: features at (block, t), linear and k-NN probes, and the zero-shot
Diffusion Classifier (arXiv 2303.16203)."""

from diffrep.represent.diffusion_classifier import SCHEDULES, PairErrors, classify, classify_run
from diffrep.represent.features import POOLS, check_times, diffusion_features, pool, resolve_blocks
from diffrep.represent.probes import knn_probe, linear_probe, plot_heatmap, probe_backbones

__all__ = ["POOLS", "SCHEDULES", "PairErrors", "check_times", "classify", "classify_run", "diffusion_features",
           "knn_probe", "linear_probe", "plot_heatmap", "pool", "probe_backbones", "resolve_blocks"]
