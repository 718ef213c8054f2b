"""Darknet-cfg YOLOv3 family in PyTorch.

``import yolo`` is cheap and imports no torch: the names below are looked up on first use
(module ``__getattr__``), so a tool that only reads a cfg, or an engine that needs no torch,
does not pay for it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import YoloError

if TYPE_CHECKING:
    from .cfg import ConfigError, parse_cfg
    from .detector import DetectError, Detector
    from .model import Darknet
    from .weights import WeightsError

#: public name -> the module that defines it
_LAZY = {
    "ConfigError": "cfg",
    "parse_cfg": "cfg",
    "Darknet": "model",
    "DetectError": "detect_inputs",
    "Detector": "detector",
    "WeightsError": "weights",
}

__all__ = ["ConfigError", "Darknet", "DetectError", "Detector", "WeightsError", "YoloError", "parse_cfg"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
