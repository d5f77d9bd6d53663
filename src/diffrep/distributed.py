"""Scale-out through ``torchrun`` (PyTorch DDP): one process by default, many when launched by torchrun.

Nothing here is a home-made distributed system: ``torchrun`` starts the processes and sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`init_from_env` joins its process group
(NCCL on CUDA, gloo on CPU), and the trainer wraps its net in
``DistributedDataParallel``.  A rank that fails ends the job: torchrun stops the other
workers, and a collective that waits longer than ``timeout`` raises instead of hanging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from diffrep.errors import DiffrepError


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0


def current() -> World:
    """The world this process belongs to (``World()`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def init_from_env(device: str = "auto", timeout_s: float = 600.0) -> World:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; a no-op for a single process.

    NCCL with one GPU per process (``cuda:LOCAL_RANK``) when ``device`` is ``auto`` and there
    are GPUs, or names ``cuda``; gloo on the CPU otherwise (``--device cpu``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if on_gpu:
            local_rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
            if local_rank >= gpus:
                raise DiffrepError(f"torchrun started local rank {local_rank} on a node with {gpus} GPU(s): use "
                                   f"--nproc-per-node {gpus} (one process per GPU), or --device cpu for gloo on the CPU")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(seconds=timeout_s))
    return current()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if current().size > 1:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself for one process)."""
    if current().size == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / current().size


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients of ``params`` (each must have one) over ranks in one all-reduce;
    no-op for one process.  For trainable tensors outside the DDP-wrapped net, such as plug-in
    heads: DDP averages only its own module's gradients."""
    if current().size == 1 or not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= current().size
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def gather_to_main(obj: object) -> list[object] | None:
    """Every rank's ``obj`` as a list on rank 0 (``None`` elsewhere)."""
    world = current()
    if world.size == 1:
        return [obj]
    out = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_chunks(chunks: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Every rank's ``{chunk index: tensor}`` concatenated in chunk order on rank 0 (``None`` elsewhere)."""
    parts = gather_to_main(chunks)
    if parts is None:
        return None
    merged = {j: x for part in parts for j, x in part.items()}
    return torch.cat([merged[j] for j in sorted(merged)])


def broadcast_from_main(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if current().size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Overwrite every rank's ``tensors`` (in place) with rank 0's (no-op for one process)."""
    if current().size == 1:
        return
    for t in tensors:
        dist.broadcast(t, src=0)
