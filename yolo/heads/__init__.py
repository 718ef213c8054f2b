"""Detection heads (the sections whose output the model collects); importing this package registers them.

:class:`Head` is the seam (see :mod:`yolo.heads.base`); :mod:`yolo.heads.yolo` is ``[yolo]``.
"""
from . import yolo  # noqa: F401  (registers [yolo])
from .base import Head, HeadLoss

__all__ = ["Head", "HeadLoss"]
