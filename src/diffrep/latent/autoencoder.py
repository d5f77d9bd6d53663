"""Autoencoders for latent diffusion: diffusers' ``AutoencoderKL`` (the LDM/SD-VAE architecture, 2112.10752),
built from a small preset, loaded from a diffrep VAE run, a diffusers folder or a hub name.

The architecture is diffusers' own class, so real SD-VAE weights (``stabilityai/sd-vae-ft-ema``) load unchanged and a
VAE trained here is saved as a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) that
diffusers itself reads.  diffusers is an optional extra: ``pip install -e ".[latent]"``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from diffrep.errors import DiffrepError
from diffrep.evaluation.encoders import state_dict_sha256

EXPORT_DIR = "vae"
"""The folder of a diffrep VAE run that holds its EMA weights as a diffusers ``AutoencoderKL``."""

VAE_PRESETS: dict[str, dict] = {
    # 0.23M parameters at 1 channel; 0.16 s per step of 64 32×32 images in bf16 on a 2-core Zen 4 (docs/latent.md)
    "VAE-T": {"widths": (16, 32, 32), "layers_per_block": 1, "norm_groups": 8, "attention": False},
    "VAE-S": {"widths": (32, 64, 64), "layers_per_block": 1, "norm_groups": 8, "attention": False},
    "VAE-B": {"widths": (64, 128, 128, 256), "layers_per_block": 2, "norm_groups": 32, "attention": True},
}


def require_diffusers():
    """The ``diffusers`` module, or a one-line error naming the extra to install."""
    try:
        import diffusers
    except ImportError:
        raise DiffrepError('latent spaces need diffusers (its AutoencoderKL): pip install -e ".[latent]" '
                           '(or pip install diffusers)') from None
    return diffusers


def parse_latent(spec: str) -> tuple[int, int, int]:
    """``"4x8x8"`` → ``(4, 8, 8)``: the latent's channels × height × width."""
    try:
        c, h, w = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise DiffrepError(f"--latent {spec!r}: give channels×height×width, e.g. 4x8x8") from None
    if min(c, h, w) < 1:
        raise DiffrepError(f"--latent {spec!r}: every size must be positive")
    return c, h, w


def build_vae(preset: str, image_shape: tuple[int, int, int], latent: tuple[int, int, int]) -> nn.Module:
    """A fresh ``AutoencoderKL`` of ``preset`` for ``image_shape`` (C×H×W) images and ``latent`` (c×h×w) latents.

    The downsampling factor H/h must be a power of two that the preset's blocks can make (each block after the first
    halves the size)."""
    if preset not in VAE_PRESETS:
        raise DiffrepError(f"unknown VAE preset {preset!r}: choose one of {', '.join(VAE_PRESETS)}")
    c, h, w = image_shape
    lc, lh, lw = latent
    if h % lh or w % lw or h // lh != w // lw or (h // lh) & (h // lh - 1):
        raise DiffrepError(f"--latent {lc}x{lh}x{lw} does not fit {h}×{w} images: the size must shrink by one power-of-"
                           f"two factor in both directions (e.g. {lc}x{h // 4}x{w // 4})")
    p = VAE_PRESETS[preset]
    blocks = int(math.log2(h // lh)) + 1
    if blocks > len(p["widths"]):
        raise DiffrepError(f"--latent {lc}x{lh}x{lw}: {preset} downsamples at most {2 ** (len(p['widths']) - 1)}×; "
                           f"use a larger latent or VAE-B")
    widths = tuple(p["widths"][:blocks])
    return require_diffusers().AutoencoderKL(
        in_channels=c, out_channels=c, latent_channels=lc, block_out_channels=widths,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=p["layers_per_block"], norm_num_groups=p["norm_groups"], sample_size=h,
        mid_block_add_attention=p["attention"])


@dataclass
class LoadedVAE:
    """A frozen autoencoder, where it came from and the SHA-256 of its weights (the latent cache's key)."""

    vae: nn.Module
    source: str
    sha256: str

    @property
    def channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def factor(self) -> int:
        """How many pixels one latent position spans along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The latent of ``image_shape`` images; a one-line error when the VAE does not fit them."""
        c, h, w = image_shape
        if c != self.channels:
            raise DiffrepError(f"the VAE {self.source} reads {self.channels}-channel images but the data has {c}: "
                               "train a VAE on this data (diffrep train-vae --data …) or pick one with "
                               f"{c} channel(s)")
        if h % self.factor or w % self.factor:
            raise DiffrepError(f"the VAE {self.source} downsamples {self.factor}×, which does not divide {h}×{w} "
                               f"images: resize the data (--image-size) to a multiple of {self.factor}")
        return self.latent_channels, h // self.factor, w // self.factor


def load_vae(source: str | Path) -> LoadedVAE:
    """A frozen ``AutoencoderKL`` in eval mode on the CPU, from: a diffrep VAE run (``diffrep train-vae --out DIR``),
    a diffusers folder (``config.json`` + weights, e.g. a downloaded ``sd-vae-ft-ema``) or a hub name (fetched by
    diffusers; needs a network or its hub cache)."""
    diffusers = require_diffusers()
    path = Path(source)
    if path.is_dir() and (path / EXPORT_DIR / "config.json").is_file():
        path = path / EXPORT_DIR                    # a diffrep VAE run: its exported EMA weights
    if path.is_dir():
        vae = _from_folder(diffusers, path)
    elif path.exists():
        raise DiffrepError(f"--space vae:{source} is a file; give a diffrep VAE run or a diffusers AutoencoderKL "
                           "folder (config.json + diffusion_pytorch_model.safetensors)")
    elif str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        vae = _from_hub(diffusers, str(source))
    else:
        raise DiffrepError(f"--space vae:{source}: no such folder; give a VAE run (diffrep train-vae --out DIR), a "
                           "diffusers AutoencoderKL folder or a hub name such as stabilityai/sd-vae-ft-ema")
    vae = vae.float().eval().requires_grad_(False)
    where = str(Path(source).resolve()) if Path(source).exists() else str(source)   # a run records where, from anywhere
    return LoadedVAE(vae, where, state_dict_sha256(vae))


def _from_folder(diffusers, path: Path) -> nn.Module:
    config = path / "config.json"
    try:
        kind = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    except (OSError, ValueError):
        kind = "unreadable"
    if kind != "AutoencoderKL":
        raise DiffrepError(f"--space vae:{path} is not an AutoencoderKL folder (its config.json names "
                           f"{kind or 'nothing'}): give a diffrep VAE run or a diffusers AutoencoderKL folder")
    try:
        return diffusers.AutoencoderKL.from_pretrained(str(path), use_safetensors=True, local_files_only=True,
                                                     low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise DiffrepError(f"--space vae:{path}: diffusers could not load it ({str(e).splitlines()[0]}); its weights "
                           "must be diffusion_pytorch_model.safetensors") from None


def _from_hub(diffusers, name: str) -> nn.Module:
    try:
        return diffusers.AutoencoderKL.from_pretrained(name, use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as e:   # the hub client raises many kinds (offline, missing repo, HTTP): all mean "not here"
        raise DiffrepError(f"--space vae:{name}: could not fetch it from the hub ({type(e).__name__}); without a "
                           "network, download it elsewhere and pass the folder (vae:/path/to/sd-vae-ft-ema)") from None


def save_vae_folder(vae: nn.Module, folder: Path) -> None:
    """``vae`` as a diffusers folder (safetensors), written into a temporary folder and renamed into place."""
    import shutil

    tmp = folder.with_name(f".tmp_{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(str(tmp), safe_serialization=True)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
