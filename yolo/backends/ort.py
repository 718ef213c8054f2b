"""The onnxruntime engine (optional: ``pip install -e ".[onnx]"``)."""
from __future__ import annotations

from pathlib import Path

import torch

from . import Backend, BackendError, ModelInfo

INSTALL = 'onnxruntime is not installed: pip install -e ".[onnx]" (or: pip install onnx onnxruntime)'


class OrtBackend(Backend):
    """Placeholder until the ONNX export lands: says what is missing."""

    name = "onnxruntime"

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str, device: torch.device,
                   names: list[str] | None) -> "OrtBackend":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendError(INSTALL) from None
        raise BackendError(f"{weights}: the onnxruntime backend is not built yet")


__all__ = ["OrtBackend", "ModelInfo", "INSTALL"]
