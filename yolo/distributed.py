"""DDP under ``torchrun``: joining and leaving the process group, rank helpers, the resume sampler.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper is a no-op, so the trainer has one code
path. gloo on CPU, NCCL on CUDA; every rank evaluates its share of the validation images
(``yolo.sharding``), rank 0 scores them and alone writes files. Under torchrun's elastic agent
(``--max-restarts``) a restarted worker group continues from the run's latest checkpoint
(``yolo.cli.train.elastic_resume``), and each worker group joins over a store of its own
(``group_store``): the one torchrun shares outlives restarts with the old group's keys in it.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from datetime import timedelta
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


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (state dicts and attributes live there)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


#: How long a rank waits for rank 0's store (torch's default process-group timeout for gloo; a
#: dead peer is seen at once, its connection reset, the timeout bounds one that hangs).
STORE_TIMEOUT = timedelta(minutes=30)
_ANNOUNCE, _NONCE = "yolo/group-store", "yolo/group-nonce"


def _agent_store_shared() -> bool:
    """torchrun hands its workers the agent's store (c10d and static rendezvous, unless
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``)."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def group_store(rank_: int, world: int, timeout: timedelta = STORE_TIMEOUT) -> dist.Store:
    """A store fresh for this worker group: rank 0 hosts it and announces its port and a nonce in
    the agent's store; the other ranks take an announcement only when its store answers with the nonce.

    Why: torchrun keeps the agent's store across restarts of the group and gives the workers no
    per-restart prefix (torch 2.4+, pytorch/pytorch#135712; ``TORCHELASTIC_RESTART_COUNT`` would
    not do, each node's agent counts its own). A restarted group then reads its predecessors' gloo
    addresses and fails to connect (a restart spent) or waits on the pairs until the timeout (seen
    after a SIGKILL: both ranks in gloo's ``Pair::waitUntilConnected``). A stale announcement names
    a store that died with its group (the agent stops the old group before the new one starts).
    """
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
    if rank_ == 0:
        own = dist.TCPStore(addr, 0, world, is_master=True, wait_for_workers=False, timeout=timeout)
        nonce = uuid.uuid4().hex
        own.set(_NONCE, nonce)
        agent.set(_ANNOUNCE, f"{own.port} {nonce}")
        return own
    deadline, stale = time.monotonic() + timeout.total_seconds(), set()
    while True:
        seen = agent.get(_ANNOUNCE).decode()  # waits for the first announcement of the run
        if seen not in stale:
            own = _connect(addr, seen, world, timeout)
            if own is not None:
                return own
            stale.add(seen)
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank_}: rank 0 did not announce its store at {addr} in {timeout}")
        time.sleep(0.05)


def _connect(addr: str, announced: str, world: int, timeout: timedelta) -> dist.Store | None:
    """The store ``announced`` ("port nonce") names when it is up and holds the nonce; else None."""
    port_, nonce = announced.split()
    try:  # a plain probe first: a stale port refuses quietly (TCPStore would log C++ traces and retry)
        socket.create_connection((addr, int(port_)), timeout=5).close()
        store = dist.TCPStore(addr, int(port_), world, is_master=False, timeout=timedelta(seconds=30))
        if not store.check([_NONCE]) or store.get(_NONCE).decode() != nonce:
            return None
    except (OSError, RuntimeError):  # RuntimeError: torch's DistError family
        return None
    store.set_timeout(timeout)
    return store


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
        backend = "nccl" if device.type == "cuda" else "gloo"
        if _agent_store_shared():
            dist.init_process_group(backend, store=group_store(rank_, world), rank=rank_, world_size=world)
        else:  # env://: rank 0 hosts the store torchrun (or the user) names in MASTER_ADDR/PORT
            dist.init_process_group(backend)
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
