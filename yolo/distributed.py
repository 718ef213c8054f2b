"""DDP under ``torchrun``: joining and leaving the process group, rank helpers, the resume sampler.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper is a no-op, so the trainer has one code
path. gloo on CPU, NCCL on CUDA; every rank evaluates its share of the validation images
(``yolo.sharding``), rank 0 scores them and alone writes files. Under torchrun's elastic agent
(``--max-restarts``) a restarted worker group continues from the run's latest checkpoint
(``is_restart``, ``yolo.cli.train``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def restart_count() -> int:
    """How many times torchrun restarted this worker group (``TORCHELASTIC_RESTART_COUNT``; 0 at first)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (state dicts and attributes live there)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, LOCAL_RANK).

    Returns (rank, world_size, device): on CUDA each process takes the GPU of its LOCAL_RANK.
    (0, 1, device) without torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    rank_, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return rank_, world, device


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[tuple[int, int, torch.device]]:
    """``init_distributed`` ... ``cleanup_distributed``, also when training fails or is interrupted."""
    try:
        yield init_distributed(device)
    finally:
        cleanup_distributed()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers into ``module`` on every rank (no-op without DDP)."""
    if is_distributed():
        for t in module.state_dict().values():
            dist.broadcast(t, 0)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (``t`` itself without DDP)."""
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


class SkipSampler(torch.utils.data.Sampler):
    """The indices of ``sampler`` after the first ``skip``: a run resumed in the middle of an epoch
    sees the rest of the same shuffled order, not the epoch again."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int = 0) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for n, i in enumerate(self.sampler):
            if n >= self.skip:
                yield i

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)
