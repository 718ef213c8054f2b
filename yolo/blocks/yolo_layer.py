"""Old home of [yolo]: it is a head now, :mod:`yolo.heads.yolo` (edit it there); this re-exports it."""
from ..heads.yolo import IOU_LOSSES, YOLOLayer, YoloSettings

__all__ = ["IOU_LOSSES", "YOLOLayer", "YoloSettings"]
