"""Inference engines behind ``Detector`` and ``evaluate()``: one interface, several engines.

An engine takes the network input (``Tensor[B, 3, H, W]`` float32 RGB in [0, 1], on the CPU)
and returns the eval contract (``Tensor[B, N, 5 + C]`` float32: cx, cy, w, h in input pixels,
objectness, class probabilities). Pre-processing (resize / letterbox) and post-processing
(thresholds, NMS, boxes mapped back) stay in one shared code path, whichever engine runs.

Engines: ``torch`` (:mod:`yolo.backends.pytorch`, our Darknet model) and, where installed,
``onnxruntime`` (:mod:`yolo.backends.ort`). Precision is the engine's business, never the
caller's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


class BackendError(ValueError):
    """An engine that cannot run what was asked (missing package, unsupported precision or
    device, a model file it cannot read); the message says what would work."""


@dataclass
class ModelInfo:
    """What pre- and post-processing need to know about a model, whichever engine runs it."""

    num_classes: int
    input_size: tuple[int, int]  # (height, width) the model was built for
    letter_box: bool
    max_stride: int
    strides: list[float]
    cfg_name: str
    names: list[str] | None = None  # names the weights carry (checkpoint or .onnx metadata)
    extra: dict[str, Any] = field(default_factory=dict)


class Backend:
    """Base of every engine: ``engine(x) -> predictions`` plus :class:`ModelInfo`."""

    name = ""

    def __init__(self, info: ModelInfo, precision: str, device: torch.device) -> None:
        self.info = info
        self.precision = precision
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device}"


def backend_for(weights: str | Path | None, backend: str | None) -> str:
    """The engine a weights file asks for: ``.onnx`` -> onnxruntime, anything else -> torch."""
    if backend is not None:
        if backend not in BACKENDS:
            raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
        return backend
    return "onnxruntime" if weights is not None and str(weights).lower().endswith(".onnx") else "torch"


def load_backend(cfg: str | Path | None, weights: str | Path, backend: str | None = None,
                 precision: str = "fp32", device: str | torch.device = "cpu",
                 names: list[str] | None = None) -> Backend:
    """An engine for ``cfg`` + ``weights`` (``.weights``, ``.pt`` or ``.onnx``)."""
    kind = backend_for(weights, backend)
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if kind == "torch":
        from .pytorch import TorchBackend
        return TorchBackend.from_files(cfg, weights, precision, torch.device(device))
    from .ort import OrtBackend  # noqa: F401  (optional dependency; says how to install it)
    return OrtBackend.from_files(cfg, weights, precision, torch.device(device), names)
