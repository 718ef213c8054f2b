"""Darknet-cfg YOLOv3 family in PyTorch."""
from .cfg import ConfigError, parse_cfg
from .detector import DetectError, Detector
from .model import Darknet
from .weights import WeightsError

__all__ = ["ConfigError", "Darknet", "DetectError", "Detector", "WeightsError", "parse_cfg"]
__version__ = "0.1.0"
