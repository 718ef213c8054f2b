"""Detection heads (the sections whose output the model collects); importing this package registers them.

:class:`Head` is the seam (see :mod:`yolo.heads.base`); :mod:`yolo.heads.yolo` is ``[yolo]``;
:mod:`~yolo.heads.region` ``[region]`` (YOLOv2), :mod:`~yolo.heads.gaussian_yolo` ``[Gaussian_yolo]``,
:mod:`~yolo.heads.detection` ``[detection]`` (YOLOv1).
"""
from . import detection, gaussian_yolo, region, yolo  # noqa: F401  (each registers its section)
from .base import Head, HeadLoss

__all__ = ["Head", "HeadLoss"]
