"""How many CPU threads the engines run (``--threads N`` / ``threads=``; default: all cores).

One process-wide number, read by every engine when it is built or run: OpenCV
(``cv2.setNumThreads``), onnxruntime (``intra_op_num_threads``), OpenVINO
(``INFERENCE_NUM_THREADS``) and torch (``torch.set_num_threads``, applied only where torch is
already imported: setting a thread count never imports it).
"""
from __future__ import annotations

import os
import sys

_threads: int | None = None


def set_threads(n: int | None) -> None:
    """Run the engines on ``n`` threads (None: the default again); torch too, where it is loaded."""
    global _threads
    if n is not None and (not isinstance(n, int) or n < 1):
        from .base import BackendError

        raise BackendError(f"threads must be a positive integer, got {n!r}")
    _threads = n
    if n is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def engine_threads() -> int:
    """The thread count asked for; else torch's where torch is loaded (what the CLIs set for it),
    else every core."""
    if _threads is not None:
        return _threads
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    return os.cpu_count() or 1


__all__ = ["engine_threads", "set_threads"]
