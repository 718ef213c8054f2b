"""The Darknet ``.weights`` file: header, then float32 tensors in the blocks' declared order.

Knows no block type: the stream order comes from each block's ``weight_units()``: a (conv, BatchNorm or
None) pair is written as Darknet writes a convolution (biases or BN beta, BN scales, mean, variance,
then the kernel); a unit with another layout (a ``[connected]``: biases, weights, then its BatchNorm)
is an :class:`OrderedUnit` listing its own tensors in file order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch import nn

from .errors import YoloError
from .io import atomic_write

if TYPE_CHECKING:
    from .model import Darknet

HEADER_VERSION = (0, 2, 5)


class WeightsError(YoloError):
    """A ``.weights`` file that does not fit the network (names the section and counts)."""


@dataclass(frozen=True)
class OrderedUnit:
    """A ``weight_units()`` entry that is not a (conv, BatchNorm) pair: ``tensors`` in the order Darknet's
    file holds them, ``owners`` the modules they belong to. Iterating it gives the owners, as iterating a
    (conv, bn) pair gives its modules, so code that collects a block's weight modules needs no case."""

    owners: tuple[nn.Module, ...]
    tensors: tuple[torch.Tensor, ...]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.owners)


def stream(model: "Darknet", cutoff: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(section index, tensor) in ``.weights`` order for the first ``cutoff`` sections."""
    blocks = list(model.module_list)[:cutoff]
    for index, block in enumerate(blocks):
        for unit in block.weight_units():
            if isinstance(unit, OrderedUnit):
                for tensor in unit.tensors:
                    yield index, tensor
                continue
            conv, bn = unit
            if bn is not None:
                yield index, bn.bias
                yield index, bn.weight
                yield index, bn.running_mean
                yield index, bn.running_var
            else:
                if conv.bias is None:
                    raise WeightsError(f"{block.where}: a convolution without BatchNorm has no bias")
                yield index, conv.bias
            yield index, conv.weight


def count_floats(model: "Darknet", cutoff: int | None = None) -> int:
    return sum(t.numel() for _, t in stream(model, cutoff))


def read_header(data: bytes, path: str) -> tuple[tuple[int, int, int], int, int]:
    """(version, seen, header bytes); ``seen`` is int64 from version 0.2 on, else int32."""
    if len(data) < 16:
        raise WeightsError(f"{path}: {len(data)} bytes, too short for a Darknet header (at least 16)")
    major, minor, revision = (int(v) for v in np.frombuffer(data, np.int32, 3))
    if major * 10 + minor >= 2 and major < 1000:
        if len(data) < 20:
            raise WeightsError(f"{path}: header {major}.{minor}.{revision} needs 20 bytes, file has {len(data)}")
        return (major, minor, revision), int(np.frombuffer(data, np.int64, 1, 12)[0]), 20
    return (major, minor, revision), int(np.frombuffer(data, np.int32, 1, 12)[0]), 16


def load(model: "Darknet", path: str | Path, cutoff: int | None = None) -> int:
    """Fill the model from a Darknet file; returns ``seen``.

    The floats the network needs are read with one ``readinto`` into one flat float32
    array, and each float32 CPU parameter then becomes a view of its slice: no second
    copy (248 MB for yolov3). Other dtypes/devices get a copy. A file shorter than the
    network fails naming the section where it ran out; a longer one fails unless
    ``cutoff`` is given (then only the first ``cutoff`` sections' floats are read).
    """
    path = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise WeightsError(f"cannot read weights file '{path}': {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        _, seen, offset = read_header(f.read(20), path)
        if (size - offset) % 4:
            raise WeightsError(f"{path}: {size - offset} bytes after the {offset}-byte header "
                               "is not a whole number of float32 values")
        available = (size - offset) // 4
        tensors = list(stream(model, cutoff))
        total = sum(t.numel() for _, t in tensors)
        if total > available:
            _ran_out(model, path, tensors, total, available, offset, cutoff)
        if cutoff is None and available > total:
            raise WeightsError(f"{path}: {available - total} floats left after the last section; the "
                               f"network needs {total}, the file has {available}: wrong cfg for these "
                               "weights?")
        # numpy's allocator (malloc) reuses freed heap pages; fresh torch.empty pages of this
        # size each cost a page fault, which made loading 4x slower (benchmarks/).
        buffer = np.empty(total, "<f4")
        f.seek(offset)
        got = f.readinto(memoryview(buffer).cast("B")) if total else 0
        if got != 4 * total:
            raise WeightsError(f"{path}: read {got} bytes of {4 * total}: file changed while reading?")
        flat = torch.from_numpy(buffer)
    pos = 0
    with torch.no_grad():
        for _, tensor in tensors:
            n = tensor.numel()
            part = flat[pos:pos + n].view(tensor.shape)
            if tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous():
                tensor.data = part
            else:
                tensor.copy_(part)
            pos += n
    return seen


def _ran_out(model: "Darknet", path: str, tensors: list[tuple[int, torch.Tensor]], total: int,
             available: int, offset: int, cutoff: int | None) -> None:
    """Raise the error for a short file, naming the section whose floats it cuts."""
    pos = 0
    for index, tensor in tensors:
        pos += tensor.numel()
        if pos > available:
            break
    block = model.module_list[index]
    raise WeightsError(
        f"{path}: the stream ran out in section {index} ({block.where}): the network needs {total} "
        f"floats up to {'the cutoff' if cutoff is not None else 'its end'}, the file has {available} "
        f"(short by {total - available}; file ends at byte offset {offset + 4 * available})")


def save(model: "Darknet", path: str | Path, cutoff: int | None = None, seen: int = 0) -> None:
    """Write header 0.2.5 + int64 ``seen`` + the stream, atomically."""
    parts = [t.detach().to("cpu", torch.float32).reshape(-1).numpy() for _, t in stream(model, cutoff)]
    body = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    with atomic_write(path) as f:
        np.array(HEADER_VERSION, np.int32).tofile(f)
        np.array([seen], np.int64).tofile(f)
        body.astype("<f4").tofile(f)
