"""Multi-process training under ``torchrun`` (DistributedDataParallel); one process is the default.

``torchrun --nproc_per_node N train_xxx.py ...`` starts N copies of a training script and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
A training script calls :func:`init` once: with ``WORLD_SIZE > 1`` it joins the process group
(gloo on CPU, nccl on CUDA, chosen from the device) and returns this process's device
(``cuda:<LOCAL_RANK>`` on GPU); without torchrun nothing is initialised and every helper below
is a no-op, so a single process behaves exactly as a plain script.

Data split: every optimiser step has a *global batch* of ``n`` items (crops, faces). Item ``i`` is
drawn from a random generator seeded with ``(seed, step, i)`` (:func:`item_rng`), and rank ``r``
takes items ``r, r + N, r + 2N, ...`` (:func:`shard_indices`). The N ranks therefore process
exactly the items one process with the same global batch would, and a resumed run draws the same
items as an uninterrupted one. Losses are normalised by global counts (:func:`all_reduce_sum`)
and multiplied by the world size, so that DDP's gradient *average* equals the gradient of the
global batch's loss.

Only rank 0 logs, draws progress bars and writes checkpoints (:func:`is_main`); every rank
resumes from the checkpoint rank 0 chose (:func:`broadcast_object`). Evaluation scripts do not
use a process group: they shard face ids by ``RANK``/``WORLD_SIZE`` (:func:`mvfr.stage.shard`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def launch_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the variables torchrun sets; ``(0, 1, 0)`` without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def backend_for(device: str | torch.device) -> str:
    """The process-group backend for a device: ``nccl`` on CUDA, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init(device: str) -> str:
    """Join the torchrun process group (when ``WORLD_SIZE > 1``) -> this process's device.

    ``device`` is what :func:`mvfr.runtime.resolve_device` returned (``cpu``, ``cuda`` or ``cuda:K``).
    On CUDA each process takes the GPU of its ``LOCAL_RANK``; asking for more processes on a node
    than it has GPUs is an error. Without torchrun (or with one process) nothing is initialised.
    """
    rank, world, local = launch_env()
    if world <= 1 or is_initialised():
        return device
    if torch.device(device).type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise RuntimeError(f"LOCAL_RANK {local} but this node has {count} CUDA device(s); start at most {count} processes per node")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), rank=rank, world_size=world)
    log.info("process %d of %d (local rank %d) on %s, backend %s", rank, world, local, device, dist.get_backend())
    return device


def is_initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if is_initialised() else 0


def world_size() -> int:
    """Number of training processes (1 without a process group)."""
    return dist.get_world_size() if is_initialised() else 1


def is_main() -> bool:
    """True on the process that logs and writes (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialised():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if is_initialised():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when several processes train, else ``model`` itself.

    The model must already be on this process's device; DDP broadcasts rank 0's weights.
    """
    if world_size() <= 1:
        return model
    p = next(model.parameters())
    ids = [p.device.index] if p.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (or ``net`` itself)."""
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


def no_sync(net: torch.nn.Module, skip: bool):
    """Context in which DDP does not all-reduce gradients (``skip`` and ``net`` is DDP): gradient
    accumulation over several forward/backward passes of one step. A null context otherwise."""
    import contextlib

    if skip and isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return net.no_sync()
    return contextlib.nullcontext()


def shard_indices(n: int) -> list[int]:
    """Indices of the items of a global batch of ``n`` that this rank processes (``rank::world``).

    Every rank must get at least one item (DDP needs a backward pass on every rank).
    """
    world = world_size()
    if n < world:
        raise ValueError(f"a global batch of {n} cannot be split over {world} processes; use a batch of at least {world}")
    return list(range(rank(), n, world))


def check_global_batch(n: int, option: str) -> None:
    """Exit with a clear message unless a global batch of ``n`` (option ``option``) gives every rank an item."""
    if n < world_size():
        raise SystemExit(f"error: {option} {n} is smaller than the {world_size()} processes; every process needs at least one item per step")


def item_rng(seed: int, step: int, item: int) -> np.random.Generator:
    """Random generator of item ``item`` of the global batch of step ``step`` (same on every rank)."""
    return np.random.default_rng([int(seed), int(step), int(item)])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from ``rng`` (for torch-side augmentation of one item)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor without gradient); ``x`` detached in a single process."""
    x = x.detach().clone()
    if is_initialised():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` itself in a single process)."""
    if not is_initialised():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
