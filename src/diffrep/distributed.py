"""Scale-out through ``torchrun`` (PyTorch DDP): one process by default, many when launched by torchrun.

Nothing here is a home-made distributed system: ``torchrun`` starts the processes and sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`init_from_env` joins its process group
(NCCL on CUDA, gloo on CPU), and the trainer wraps its net in
``DistributedDataParallel`` — or, with ``--fsdp``, shards it with FSDP2's ``fully_shard``
(:func:`shard`): parameters, gradients, optimizer and EMA state are split over the ranks and
gathered block by block for each forward.  Checkpoints hold full tensors either way
(:func:`full_state` / :func:`shard_state_like`), so a run may switch between the two.
A rank that fails ends the job: torchrun stops the other
workers, and a collective that waits longer than ``timeout`` raises instead of hanging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

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


def shutdown() -> None:
    """Leave the process group (local, not a collective): without it a gloo rank could abort at
    interpreter exit ("terminate called without an active exception") while its threads wind down."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if current().size > 1:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself for one process)."""
    return _all_reduce(value, "sum") / current().size


def min_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum of a tensor over all ranks (itself for one process)."""
    return _all_reduce(value, "min")


def max_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of a tensor over all ranks (itself for one process)."""
    return _all_reduce(value, "max")


def _all_reduce(value: torch.Tensor, op: str) -> torch.Tensor:
    if current().size == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return value


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


def shard(net: nn.Module, units: tuple[type[nn.Module], ...]) -> None:
    """FSDP2: shard every submodule of a type in ``units`` (the net's repeated blocks), then the rest.

    In place: the parameters become ``DTensor`` shards, each block's are all-gathered just
    before its forward (and backward) and freed after, and gradients are reduce-scattered."""
    from torch.distributed.fsdp import fully_shard

    for module in net.modules():
        if isinstance(module, units):
            fully_shard(module)
    fully_shard(net)


def full_state(state: object) -> object:
    """``state`` (a state dict, nested dicts/lists allowed) with every ``DTensor`` gathered to a full tensor.

    Collective under FSDP: every rank must call it, in the same order."""
    if isinstance(state, DTensor):
        return state.full_tensor()
    if isinstance(state, dict):
        return {k: full_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [full_state(v) for v in state]
    return state


def shard_state_like(full: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors cut into the shards of ``like``'s ``DTensor`` values (plain ones pass through).

    Every rank holds the same ``full`` (read from one checkpoint), so each keeps its own shard
    without communicating."""
    return {k: distribute_tensor(v.to(like[k].device), like[k].device_mesh, like[k].placements, src_data_rank=None)
            if isinstance(like.get(k), DTensor) else v for k, v in full.items()}


def shard_optimizer_state(state: dict, params: list[torch.Tensor]) -> dict:
    """An optimizer state dict of full tensors, its per-parameter tensors cut like ``params``
    (in ``optimizer.param_groups`` order) where those are ``DTensor`` shards."""
    per_param = {i: shard_state_like(s, {k: params[i] for k in s if k != "step"})
                 for i, s in state["state"].items()}
    return {**state, "state": per_param}


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over a mix of FSDP shards (``DTensor``) and plain parameters (plug-in heads),
    which PyTorch's own refuses to combine; returns the total norm (no host sync)."""
    sharded = [p.grad for p in params if isinstance(p, DTensor) and p.grad is not None]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [p.grad for p in params if not isinstance(p, DTensor) and p.grad is not None]
    norms = [torch.nn.utils.get_total_norm(sharded).full_tensor()] + \
            ([torch.nn.utils.get_total_norm(plain)] if plain else [])
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_([g.to_local() for g in sharded] + plain, scale)
    return total
