"""A trained run on disk: its net (with the architecture options its plug-ins asked for), process and config.

Every command that reads a model goes through :func:`load_run`.  A run directory holds
``config.yaml`` (the resolved config), ``model.json`` (image shape, classes, model, process),
``checkpoints/step_NNNNNNN/`` (:mod:`diffrep.checkpoint`), ``metrics.jsonl``, ``eval.jsonl``,
``tb/`` and ``grids/``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from diffrep.checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, verify
from diffrep.config import TrainConfig, load_run_config
from diffrep.data import Space, space_from_record
from diffrep.distill.spec import takes_guidance_scale
from diffrep.errors import DiffrepError
from diffrep.nets import UNet, build_net
from diffrep.plugins import plugin_net_options
from diffrep.processes import Process, make_process
from diffrep.runtime import pick_device

if TYPE_CHECKING:
    from diffrep.latent.diffusevae import Reconstructions


class Run(NamedTuple):
    """A loaded run: the net (EMA or raw weights, in eval mode, on the device), its process, its config,
    ``info`` (``model.json`` plus the checkpoint's step, the weights' name and the config as a dict), the space it
    works in (images ↔ ``x0``) and, for a DiffuseVAE run, its conditioning images (:mod:`diffrep.latent.diffusevae`)."""

    net: nn.Module
    process: Process
    config: TrainConfig
    info: dict
    space: Space
    image_condition: Reconstructions | None = None

    @property
    def x0_shape(self) -> tuple[int, int, int]:
        """What the net sees and the samplers draw: the images' shape in the pixel space, the latent's in a VAE's."""
        return x0_shape_of(self.info)


def x0_shape_of(info: dict) -> tuple[int, int, int]:
    """``x0_shape`` of a ``model.json`` (runs from before latent spaces record only ``image_shape``)."""
    return tuple(info.get("x0_shape", info["image_shape"]))


def build_model(cfg: TrainConfig, x0_shape: tuple[int, int, int], num_classes: int,
                embedding_dim: int = 0) -> nn.Module:
    """The net of ``cfg`` for inputs of ``x0_shape``, with the architecture options its plug-ins ask for
    (``selfcond``), a DiffuseVAE run's conditioning image, a guidance-distilled student's scale input and an
    embedding-conditioned run's embedding size."""
    c, h, _ = x0_shape
    net = build_net(cfg.model, image_size=h, in_channels=c, num_classes=num_classes, **plugin_net_options(cfg.plugins),
                    **({"grad_checkpoint": True} if cfg.grad_checkpoint else {}),
                    **({"image_channels": c} if cfg.diffusevae else {}),
                    **({"guidance_embedding": True} if takes_guidance_scale(cfg.distill) else {}),
                    **({"embedding_dim": embedding_dim} if embedding_dim else {}))
    if cfg.channels_last:
        if not isinstance(net, UNet):
            raise DiffrepError("--channels-last is for the U-Net (a DiT has no convolutions after its patch embedding)")
        net = net.to(memory_format=torch.channels_last)
    return net


def load_run(run_dir: Path | str, weights: str = "ema", device: str = "auto", step: int | None = None) -> Run:
    """Load a trained run for sampling/probing: ``(net, process, config, model_info, space, image_condition)``;
    ``weights``: ``ema`` or ``model``; ``step``: that checkpoint instead of the latest.  A latent run loads its VAE (a
    one-line error when it is gone)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir) if step is None else checkpoint_at(run_dir, step)
    if ckpt is None:
        raise DiffrepError(f"{run_dir} has no usable checkpoint yet: train it first (diffrep train ... --out {run_dir})")
    info = model_info(run_dir, ckpt)
    net = build_model(cfg, x0_shape_of(info), info["num_classes"], embedding_dim_of(info))
    net.load_state_dict(ckpt.weights(weights))
    info = {**info, "step": ckpt.step, "weights": weights, "config": asdict(cfg)}
    device = pick_device(device)
    condition = None
    if info.get("image_condition") is not None:
        from diffrep.latent.diffusevae import reconstructions_from_record

        condition = reconstructions_from_record(info["image_condition"], tuple(info["image_shape"]), run_dir, device)
    return Run(net.to(device).eval(), make_process(cfg.process, cfg.prediction, cfg.schedule, cfg.time_sampling),
               cfg, info, space_from_record(info.get("space"), run_dir, device), condition)


def embedding_dim_of(info: dict) -> int:
    """The embedding size of an embedding-conditioned run's ``model.json`` (0 for any other run)."""
    condition = info.get("condition") or {}
    return condition.get("dim", 0) if condition.get("name") == "embedding" else 0


def checkpoint_at(run_dir: Path, step: int) -> Checkpoint:
    """The run's checkpoint of ``step`` (verified); a one-line error listing the steps it keeps where it has none."""
    for path in list_checkpoints(run_dir):
        if int(path.name[5:]) == step:
            return verify(path)
    kept = ", ".join(str(int(p.name[5:])) for p in list_checkpoints(run_dir)) or "none"
    raise DiffrepError(f"{run_dir} keeps no checkpoint of step {step} (it keeps: {kept}); train with --keep-last 0 to "
                       "keep every checkpoint")


def model_info(run_dir: Path, ckpt: Checkpoint) -> dict:
    """The run's ``model.json``; where it is missing or damaged, the copy in the checkpoint's manifest (with a warning)."""
    try:
        info = json.loads((run_dir / "model.json").read_text())
        if isinstance(info, dict) and {"image_shape", "num_classes"} <= set(info):
            return info
    except (OSError, ValueError):
        pass
    if "model" not in ckpt.manifest:
        raise DiffrepError(f"{run_dir}/model.json is missing or damaged and its checkpoint (written before checkpoints "
                           "kept a copy) holds none: write it as {\"image_shape\": [C, H, W], \"num_classes\": N}")
    warnings.warn(f"{run_dir}/model.json is missing or damaged: using the copy in {ckpt.path.name}'s manifest",
                  stacklevel=3)
    return ckpt.manifest["model"]


def check_images_fit_run(images: torch.Tensor, info: dict, run: Path | str, data: str) -> None:
    """Refuse images whose C×H×W differs from what the run was trained on (``info``: :func:`load_run`'s)."""
    if tuple(images.shape[1:]) != tuple(info["image_shape"]):
        raise DiffrepError(f"{data} images are {tuple(images.shape[1:])} (C×H×W) but {run} was trained on "
                           f"{tuple(info['image_shape'])}: pass --data with images of the run's size")


def refuse_latent(space: Space, run: Path | str, condition: "Reconstructions | None" = None) -> None:
    """Refuse a latent or DiffuseVAE run where a command works on plain pixel-space priors only (restoration and
    translation)."""
    if condition is not None:
        raise DiffrepError(f"{run} is a DiffuseVAE run (conditioned on a VAE's reconstruction); restore and translate "
                           "need a plain pixel-space run: train one without --diffusevae")
    if space.name != "pixels":
        raise DiffrepError(f"{run} works in a VAE's latent space; restore and translate need a pixel-space run "
                           "(their operators act on pixels): train one without --space")
