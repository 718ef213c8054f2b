"""The Darknet ``.weights`` file: header, then float32 tensors in the blocks' declared order.

Knows no block type: the stream order comes from each block's ``weight_units()``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

if TYPE_CHECKING:
    from .model import Darknet

HEADER_VERSION = (0, 2, 5)


class WeightsError(ValueError):
    """A ``.weights`` file that does not fit the network (names the section and counts)."""


def stream(model: "Darknet", cutoff: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(section index, tensor) in ``.weights`` order for the first ``cutoff`` sections."""
    blocks = list(model.module_list)[:cutoff]
    for index, block in enumerate(blocks):
        for conv, bn in block.weight_units():
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
    """Fill the model from a Darknet file (one read); returns ``seen``."""
    path = str(path)
    try:
        raw = np.fromfile(path, np.uint8)
    except OSError as e:
        raise WeightsError(f"cannot read weights file '{path}': {e.strerror or e}") from None
    _, seen, offset = read_header(raw[:20].tobytes(), path)
    if (raw.size - offset) % 4:
        raise WeightsError(f"{path}: {raw.size - offset} bytes after the {offset}-byte header "
                           "is not a whole number of float32 values")
    floats = raw[offset:].view(np.float32)
    total = count_floats(model, cutoff)
    pos = 0
    with torch.no_grad():
        for index, tensor in stream(model, cutoff):
            n = tensor.numel()
            if pos + n > floats.size:
                block = model.module_list[index]
                raise WeightsError(
                    f"{path}: the stream ran out in section {index} ({block.where}): the network "
                    f"needs {total} floats up to {'the cutoff' if cutoff else 'its end'}, the file "
                    f"has {floats.size} (short by {total - floats.size}; byte offset "
                    f"{offset + 4 * floats.size})")
            tensor.copy_(torch.from_numpy(floats[pos:pos + n]).view_as(tensor))
            pos += n
    if cutoff is None and pos != floats.size:
        raise WeightsError(f"{path}: {floats.size - pos} floats left after the last section; the network "
                           f"needs {pos}, the file has {floats.size}: wrong cfg for these weights?")
    return seen


def save(model: "Darknet", path: str | Path, cutoff: int | None = None, seen: int = 0) -> None:
    """Write header 0.2.5 + int64 ``seen`` + the stream, atomically."""
    parts = [t.detach().to("cpu", torch.float32).reshape(-1).numpy() for _, t in stream(model, cutoff)]
    body = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.array(HEADER_VERSION, np.int32).tofile(f)
        np.array([seen], np.int64).tofile(f)
        body.astype("<f4").tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
