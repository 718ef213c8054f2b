"""Evaluation spread over the ranks of a ``torchrun`` job: each rank predicts ``records[rank::world]``,
rank 0 gathers the predictions (``torch.distributed.gather_object``) and scores them once.

Inference-side on purpose (``yolo.evaluate`` and ``test.py`` use it without the training modules):
it only joins and leaves the process group torchrun describes and gathers Python objects. torch is
imported only when there is a group to join or to ask (``WORLD_SIZE`` > 1, or torch already loaded):
a single ``test.py`` process on an engine without torch never imports it.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch


def env_world() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def sharded_session(device: "torch.device") -> "Iterator[tuple[int, int, torch.device]]":
    """(rank, world, device) of a ``torchrun`` evaluation, joining the process group (gloo on CPU,
    NCCL on CUDA, each process on the GPU of its LOCAL_RANK) and leaving it after; (0, 1, device)
    without torchrun or when a process group is already up (left to its owner)."""
    world = env_world()
    if world <= 1 and "torch" not in sys.modules:  # no torch loaded: no process group can be up
        yield 0, 1, device
        return
    import torch
    import torch.distributed as dist

    if world <= 1 or dist.is_initialized():
        yield (dist.get_rank(), dist.get_world_size(), device) if dist.is_initialized() else (0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world, device
    finally:
        dist.destroy_process_group()


def gather_to_first(obj: Any, world: int) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the others."""
    import torch.distributed as dist

    rank = dist.get_rank()
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
