"""The model's training loss: the sum of its heads' losses, divided by the number of images.

Each head type owns its targets and loss (:meth:`yolo.heads.Head.make_loss`; [yolo]'s, Darknet's
assignment and deltas, is :mod:`yolo.heads.yolo_loss`). Darknet sums the deltas of a batch and
divides the update by the batch size: the loss here is the sum over predictions, divided by the
number of images. The box-overlap helpers the losses share live here too.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def bbox_iou_kind(a: torch.Tensor, b: torch.Tensor, kind: str = "iou", eps: float = 1e-9) -> torch.Tensor:
    """Element-wise IoU / GIoU / DIoU / CIoU of paired boxes ``Tensor[N, 4]`` given as cx, cy, w, h."""
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(min=0).prod(1)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter + eps
    iou = inter / union
    if kind in ("iou", "mse"):
        return iou
    hull_wh = torch.max(a2, b2) - torch.min(a1, b1)
    if kind == "giou":
        hull = hull_wh.prod(1) + eps
        return iou - (hull - union) / hull
    c2 = hull_wh.square().sum(1) + eps  # squared diagonal of the enclosing box
    rho2 = (a[:, :2] - b[:, :2]).square().sum(1)  # squared distance of the centres
    if kind == "diou":
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(b[:, 2] / (b[:, 3] + eps)) - torch.atan(a[:, 2] / (a[:, 3] + eps))).square()
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return iou - (rho2 / c2 + v * alpha)


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``[N, M]`` of boxes sharing a centre, given widths/heights ``[N, 2]``, ``[M, 2]``."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter).clamp(min=1e-9)


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
