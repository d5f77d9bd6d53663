"""Latent diffusion: autoencoders (diffusers' AutoencoderKL), the latent cache, the VAE space, VAE training, and
DiffuseVAE's conditioning on a VAE's reconstructions.

Needs the ``latent`` extra (``pip install -e ".[latent]"``); the imports here do not load diffusers until a VAE is
built or loaded.  See docs/latent.md.
"""

from diffrep.latent.autoencoder import VAE_PRESETS, LoadedVAE, build_vae, load_vae, save_vae_folder
from diffrep.latent.cache import LatentTable, channel_stats, latent_table
from diffrep.latent.diffusevae import Reconstructions, open_reconstructions
from diffrep.latent.space import VAESpace, open_vae_space
from diffrep.latent.train_vae import VaeConfig, VaeTrainer, reconstruction_floor

__all__ = ["VAE_PRESETS", "LoadedVAE", "build_vae", "load_vae", "save_vae_folder", "LatentTable", "channel_stats",
           "latent_table", "Reconstructions", "open_reconstructions", "VAESpace", "open_vae_space", "VaeConfig",
           "VaeTrainer", "reconstruction_floor"]
