"""Draw many samples from a trained model, reproducibly and in chunks.

Chunk ``j`` (images ``j·B … (j+1)·B − 1``) uses a generator seeded by ``(seed, j)``, so
image ``i`` is the same whatever process draws it and however many processes share
the work, as long as the chunk size ``B`` is the same.  :func:`sample_run` samples a run on disk into
an ADM-layout ``.npz`` (what ``diffrep sample`` does).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from tqdm import tqdm

from diffrep import distributed
from diffrep.data import PixelSpace, Space
from diffrep.errors import DiffrepError
from diffrep.guidance import Guidance
from diffrep.guidance.cfg import cfg_wrapper
from diffrep.guidance.spec import scale_range
from diffrep.precision import Precision, resolve_precision
from diffrep.processes import ImageBound
from diffrep.rng import keyed_generator
from diffrep.samplers import get_sampler, initial_noise

if TYPE_CHECKING:
    from diffrep.latent.diffusevae import Reconstructions


def make_labels(spec: str | int | None, n: int, num_classes: int, seed: int = 0) -> torch.Tensor | None:
    """``balanced`` (image i shows class i mod C), ``random``, a single class index, or ``None`` (unconditional)."""
    if num_classes == 0 and spec not in (None, "none", "balanced"):
        raise DiffrepError(f"--labels {spec}: the run is unconditional (trained without labels); drop --labels")
    if num_classes == 0 or spec is None or spec == "none":
        return None
    if spec == "balanced":
        return torch.arange(n) % num_classes
    if spec == "random":
        return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))
    try:
        c = int(spec)
    except ValueError:
        raise DiffrepError(f"--labels {spec!r}: use balanced, random, none or a class index 0…{num_classes - 1}") from None
    if not 0 <= c < num_classes:
        raise DiffrepError(f"--labels {c}: class index out of range 0…{num_classes - 1}")
    return torch.full((n,), c, dtype=torch.long)


def generate(net: torch.nn.Module, process, shape: tuple[int, int, int], n: int, *, sampler: str = "euler", steps: int = 50,
             grid_rho: float | None = None, seed: int = 0, labels: torch.Tensor | None = None,
             guidance: Guidance | None = None, batch_size: int = 250, autocast: bool = True,
             chunks: Callable[[int], bool] | None = None, progress: bool = True,
             space: Space | None = None, image_condition: Reconstructions | None = None) -> dict[int, torch.Tensor]:
    """Samples as ``{chunk index: uint8 images}`` for the chunks ``chunks(j)`` selects (all by default).

    ``guidance`` wraps the net's denoiser (e.g. ``cfg_guidance(1.5, labels=labels)``); samples are decoded through
    ``space`` (the pixel space by default).  A DiffuseVAE net refines VAE samples: chunk ``j``'s are drawn by
    ``image_condition`` from a generator seeded by ``(seed, j, 1)``, apart from the diffusion's noise.  Sampling runs
    under ``torch.inference_mode``, or under ``torch.no_grad`` where the guidance takes gradients
    (``guidance.needs_grad``).
    """
    space = space or PixelSpace()
    device = next(net.parameters()).device
    base = process.denoiser(net, autocast)
    sample = get_sampler(sampler)
    ts = process.time_grid(steps, grid_rho)
    todo = [j for j in range(-(-n // batch_size)) if chunks is None or chunks(j)]
    out = {}
    for j in tqdm(todo, desc="sample", unit="batch", disable=not progress):
        lo, hi = j * batch_size, min(n, (j + 1) * batch_size)
        g = keyed_generator(seed, j)
        x = initial_noise(process, (hi - lo, *shape), ts[0], g, device)
        cond = None if labels is None else labels[lo:hi].to(device)
        denoiser = base
        if image_condition is not None:
            denoiser = ImageBound(base, image_condition.sample(hi - lo, keyed_generator(seed, j, 1)).to(device))
        if guidance is not None:
            denoiser = guidance(denoiser)
        with torch.no_grad() if getattr(guidance, "needs_grad", False) else torch.inference_mode():
            out[j] = space.decode(sample(denoiser, x, ts, cond=cond, generator=g).cpu())
    return out


def cfg_guidance(scale: float, interval: tuple[float, float] | None = None,
                 labels: torch.Tensor | None = None, info: dict | None = None) -> Guidance | None:
    """Classifier-free guidance at ``scale`` (``None`` at 1: off); it needs class labels to guide towards.  ``info``:
    the run's (:func:`~diffrep.runs.load_run`), whose guidance-distilled student guides in one forward."""
    if scale == 1.0:
        return None
    if labels is None:
        raise DiffrepError("--cfg needs a class-conditional model and --labels")
    return cfg_wrapper(scale, interval, scale_range(info or {}))


def default_sampling(info: dict, sampler: str | None, steps: int | None, grid_rho: float | None) -> tuple[str, int]:
    """The sampler and steps to use: those asked, else a progressive student's own (DDIM at the steps it was
    distilled for), else Euler at 50 steps; a warning where a progressive student is sampled otherwise."""
    record = info.get("distill") or {}
    if record.get("kind") != "progressive":
        return sampler or "euler", steps or 50
    own = (record["sampler"], record["steps"])
    chosen = (sampler or own[0], steps or own[1])
    if chosen != own or grid_rho is not None:
        warnings.warn(f"this progressive student was distilled for {own[0]} at {own[1]} steps on its process's default "
                      f"grid; {chosen[0]} at {chosen[1]} steps{' with --grid-rho' if grid_rho else ''} is not what it "
                      "learned", stacklevel=3)
    return chosen


COMPILE_PAYS_FROM = 50_000
"""Image × net-call count from which ``diffrep sample`` compiles by default: 1,000 images at 50 Euler steps.
Measured on a 2-core CPU (docs/sampling.md#compiling): compiling took 15–30 s and saved 30–48% of a batch-250
forward, so it paid for itself after 21–80 forwards (DiT-S/4) and 190 (UNet-S); 1,000 × 50 is 200 forwards."""


def compile_pays(images: int, nfe: int) -> bool:
    """Whether compiling the net pays for itself when one process draws ``images`` at ``nfe`` net calls each."""
    return images * nfe >= COMPILE_PAYS_FROM


def sample_run(run: Path, out: Path, n: int = 1000, sampler: str | None = None, steps: int | None = None,
               grid_rho: float | None = None, seed: int = 0,
               cfg: float = 1.0, cfg_interval: tuple[float, float] | None = None, labels: str = "balanced",
               batch_size: int = 250, weights: str = "ema", precision: str = "auto", grid: Path | None = None,
               device: str = "auto", progress: bool = True, compile_net: bool | str = "auto",
               on_start: Callable[[Precision], None] | None = None, guidance: list[str] | None = None,
               like: Path | str | None = None) -> dict:
    """Sample a run into an ADM-layout ``.npz``; returns what was done.

    ``sampler``/``steps``: Euler, 50, unless the run is a progressive student (:func:`default_sampling`).
    ``compile_net``: ``True``/``"on"``, ``False``/``"off"``, or ``"auto"`` (:func:`compile_pays`).
    Under torchrun, rank ``r`` of ``W`` draws chunks ``j ≡ r (mod W)`` and rank 0 writes the
    file; chunk ``j`` is seeded by ``(seed, j)``, so image ``i`` is the same for any ``W``.
    ``on_start`` gets the precision once the run is loaded and the options checked.  ``guidance``: ``--guidance`` specs
    (:mod:`diffrep.guidance.spec`), applied after ``cfg``.  An embedding-conditioned run samples from training
    images' embeddings, or from those of the images ``like`` (variations; see
    :func:`~diffrep.represent.embeddings.sampling_embeddings`).
    """
    from diffrep.data import save_grid
    from diffrep.guidance.spec import GuidanceChain, build_guidance
    from diffrep.io import provenance, save_npz
    from diffrep.represent.embeddings import sampling_embeddings
    from diffrep.runs import embedding_dim_of, load_run
    from diffrep.runtime import CompiledOrEager
    from diffrep.samplers import network_evaluations

    if sampler is not None:
        get_sampler(sampler)
    if n < 1:
        raise DiffrepError(f"--n must be positive, got {n}")
    loaded = load_run(run, weights, device)
    net, process, info = loaded.net, loaded.process, loaded.info
    sampler, steps = default_sampling(info, sampler, steps, grid_rho)
    chosen = resolve_precision(precision, next(net.parameters()).device)
    world = distributed.current()
    nfe = network_evaluations(sampler, steps)
    compiled = compile_pays(-(-n // world.size), nfe) if compile_net == "auto" else compile_net in (True, "on")
    if compiled:
        net = CompiledOrEager(net)
    if embedding_dim_of(info):
        cond, y = sampling_embeddings(run, info, n, labels, seed, next(net.parameters()).device, like)
    elif like is not None:
        raise DiffrepError(f"--like samples variations from an embedding-conditioned run (train --condition "
                           f"embedding:…); {run} is conditioned on {'labels' if info['num_classes'] else 'nothing'}")
    else:
        cond = y = make_labels(labels, n, info["num_classes"], seed)
    chain = build_guidance(list(guidance or []), run, info, cond, next(net.parameters()).device, chosen.autocast)
    legacy = cfg_guidance(cfg, cfg_interval, cond, info)
    if legacy is not None:
        chain = GuidanceChain([legacy] + (chain.wrappers if chain else []), chain is not None and chain.needs_grad)
    if on_start is not None and world.is_main:
        on_start(chosen)
    start = time.perf_counter()
    chunks = generate(net, process, loaded.x0_shape, n, sampler=sampler, steps=steps, grid_rho=grid_rho,
                      seed=seed, labels=cond, guidance=chain, batch_size=batch_size,
                      autocast=chosen.autocast,
                      chunks=lambda j: j % world.size == world.rank, progress=progress and world.is_main,
                      space=loaded.space, image_condition=loaded.image_condition)
    images = distributed.gather_chunks(chunks)
    seconds = time.perf_counter() - start
    if world.is_main:
        arrays = {"arr_0": images.permute(0, 2, 3, 1).numpy()}
        if y is not None:
            arrays["arr_1"] = y.numpy()
        save_npz(out, provenance(run, info["step"]), **arrays)
        if grid:
            save_grid(images[:100], grid, nrow=10)
    distributed.barrier()
    return {"n": n, "sampler": sampler, "steps": steps, "grid_rho": grid_rho, "nfe": nfe,
            "cfg": cfg, "cfg_interval": cfg_interval, "guidance": list(guidance or []), "seed": seed,
            "checkpoint_step": info["step"],
            "precision": chosen.name, "compiled": compiled, "seconds": seconds,
            "images_per_s": n / seconds, "out": str(out)}
