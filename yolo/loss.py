"""The model's training loss: the sum of its heads' losses, divided by the number of images.

Each head type owns its targets and loss (:meth:`yolo.heads.Head.make_loss`; [yolo]'s, Darknet's
assignment and deltas, is :mod:`yolo.heads.yolo_loss`). Darknet sums the deltas of a batch and
divides the update by the batch size: the loss here is the sum over predictions, divided by the
number of images. The box overlaps the losses use are :mod:`yolo.boxes`' (re-exported here).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .boxes import paired_iou as bbox_iou_kind  # noqa: F401  (the losses' name for it)
from .boxes import wh_iou  # noqa: F401  (re-exported: tests and older callers)


class YOLOLoss:
    """Loss of a :class:`~yolo.model.Darknet` from its training-mode outputs: the sum of what each
    head type's loss (``Head.make_loss``, built once for all heads of that type) returns.

    ``targets`` is ``Tensor[N, 6]``: image index in the batch, class, cx, cy, w, h with
    coordinates normalised to the input image (0..1). Returns ``(loss, parts)`` where
    ``loss`` is the scalar to back-propagate (sum over predictions / images) and ``parts``
    the detached ``[box, obj, cls]`` for logging.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        heads = list(model.heads)
        if not heads:
            raise ValueError(f"{model.cfg_path.name}: no [yolo] layer, nothing to train")
        by_type: dict[type, list[int]] = {}
        for i, head in enumerate(heads):
            by_type.setdefault(type(head), []).append(i)
        self.losses = [(kind.make_loss([heads[i] for i in index]), index) for kind, index in by_type.items()]

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        device = outputs[0].device
        batch = outputs[0].shape[0]
        targets = targets.to(device=device, dtype=torch.float32)
        lbox = lobj = lcls = torch.zeros((), device=device)
        for loss, index in self.losses:
            box, obj, cls = loss([outputs[i] for i in index], targets, input_hw)
            lbox, lobj, lcls = lbox + box, lobj + obj, lcls + cls
        parts = torch.stack((lbox, lobj, lcls)).detach() / batch
        return (lbox + lobj + lcls) / batch, parts
