"""The [yolo] heads' loss as Darknet (AlexeyAB) defines it, with targets built by tensor ops.

Darknet applies its deltas straight to the raw outputs (no logistic derivative), which is
exactly the gradient of BCE-with-logits; so objectness, classes and (with ``iou_loss=mse``)
the x, y offsets use BCE-with-logits, and tw, th a squared error, each scaled as Darknet
scales its deltas. Darknet sums the deltas of a batch; the model-level
:class:`yolo.loss.YOLOLoss` divides the sum by the number of images.

Assignment (``forward_yolo_layer``): each target goes to the anchor, among *all* anchors of
the cfg, whose width/height IoU with it is best, in the [yolo] layer whose ``mask`` holds
that anchor, at the grid cell containing its centre; when ``iou_thresh < 1`` also to every
other anchor whose width/height IoU exceeds ``iou_thresh``. A prediction whose best IoU
with any target of its image exceeds ``ignore_thresh`` gets no "no object" penalty; as in
``process_batch``, that IoU (``best_match_iou``) only counts for a prediction with some class
probability above 0.25.

``objectness_smooth=1`` (``process_batch`` again): the objectness target of a prediction is
its ``best_match_iou`` where that exceeds ``ignore_thresh`` (instead of no penalty), else 0, and
an assigned cell keeps that target: Darknet sets the assigned cell's delta to ``1 - output``
only ``if (l.delta[obj_index] == 0)``, and with smoothing the first pass has already written a
non-zero delta there. Classes and boxes are unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..boxes import box_convert, box_iou, wh_iou
from ..boxes import paired_iou as bbox_iou_kind
from .base import HeadLoss


class YoloLoss(HeadLoss):
    """The summed (box, obj, cls) loss of every [yolo] layer of a model (see the module docstring).

    Settings are read from each layer at every call, so a change to ``layer.settings`` applies.
    """

    def __init__(self, layers: Sequence[torch.nn.Module]) -> None:
        layers = list(layers)
        for layer in layers:
            if layer.new_coords:
                raise ValueError(f"{layer.where}: new_coords=1 (scaled-YOLOv4 outputs) is not supported "
                                 "by the trainer's loss")
        self.layers = layers
        self.all_anchors = torch.tensor(layers[0].all_anchors, dtype=torch.float32)  # (A, 2) pixels
        for layer in layers[1:]:
            if list(map(tuple, layer.all_anchors)) != list(map(tuple, layers[0].all_anchors)):
                raise ValueError("[yolo] layers with different anchor lists: Darknet's best-anchor "
                                 "assignment needs one list shared by all layers")

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = outputs[0].device
        batch = outputs[0].shape[0]
        h_in, w_in = input_hw
        targets = targets.to(device=device, dtype=torch.float32)
        img = targets[:, 0].long()
        cls = targets[:, 1].long()
        scale_px = torch.tensor([w_in, h_in, w_in, h_in], device=device, dtype=torch.float32)
        tbox = targets[:, 2:6] * scale_px  # cx, cy, w, h in input pixels
        anchors = self.all_anchors.to(device)
        iou_anchor = wh_iou(tbox[:, 2:], anchors)  # (N, A)
        best = iou_anchor.argmax(1) if len(targets) else torch.zeros(0, dtype=torch.long, device=device)
        tbox_xyxy = box_convert(tbox, "cxcywh", "xyxy")

        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        for layer, p in zip(self.layers, outputs):
            p = p.float()
            _, na, ny, nx, _ = p.shape
            mask = torch.tensor(layer.mask, device=device)
            match = best[:, None] == mask[None]  # (N, na)
            if layer.settings.iou_thresh < 1:
                match |= iou_anchor[:, mask] > layer.settings.iou_thresh
            ti, ai = match.nonzero(as_tuple=True)
            gi = (tbox[ti, 0] / layer.out_stride).long().clamp(0, nx - 1)
            gj = (tbox[ti, 1] / layer.out_stride).long().clamp(0, ny - 1)
            bi = img[ti]

            obj_t, obj_w = self._objectness_targets(layer, p, img, tbox_xyxy, batch, (bi, ai, gj, gi))
            lobj = lobj + layer.settings.obj_normalizer * (
                F.binary_cross_entropy_with_logits(p[..., 4], obj_t, reduction="none") * obj_w).sum()
            if not len(ti):
                continue

            ps = p[bi, ai, gj, gi]  # (M, 5 + C) raw predictions at the assigned cells
            anchor_px = layer.anchors.to(device)[ai]
            tb = tbox[ti]
            lbox = lbox + layer.settings.iou_normalizer * self._box_loss(layer, ps, tb, gi, gj, anchor_px, (w_in, h_in))

            # classes: one cell may hold several targets -> multi-label target per unique cell
            cell = ((bi * na + ai) * ny + gj) * nx + gi
            uniq, inv = torch.unique(cell, return_inverse=True)
            cls_t = torch.zeros(len(uniq), layer.num_classes, device=device)
            cls_t[inv, cls[ti]] = 1.0
            if layer.settings.label_smooth_eps > 0:  # Darknet's delta_yolo_class: y * (1 - eps) + 0.5 * eps
                eps = layer.settings.label_smooth_eps
                cls_t = cls_t * (1 - eps) + 0.5 * eps
            first = torch.zeros(len(uniq), dtype=torch.long, device=device).scatter_(
                0, inv, torch.arange(len(inv), device=device))
            lcls = lcls + layer.settings.cls_normalizer * F.binary_cross_entropy_with_logits(
                ps[first, 5:], cls_t, reduction="sum")

        return lbox, lobj, lcls


    def _objectness_targets(self, layer, p: torch.Tensor, img: torch.Tensor, tbox_xyxy: torch.Tensor, batch: int,
                            assigned: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Objectness target and weight of every prediction ``(B, na, ny, nx)``: 0 where "no object",
        no penalty where a prediction already overlaps a target well, 1 at the assigned cells; with
        ``objectness_smooth`` IoU targets instead (see the module docstring)."""
        y = layer.settings
        obj_t = torch.zeros(p.shape[:4], device=p.device)
        obj_w = torch.ones(p.shape[:4], device=p.device)
        if len(img):
            with torch.no_grad():
                best_iou = self._best_iou(layer, p, img, tbox_xyxy, batch)
                # best_match_iou: Darknet's compare_yolo_class, some class probability above 0.25
                best_match = best_iou * (p[..., 5:].sigmoid().amax(-1) > 0.25)
            over = best_match > y.ignore_thresh
            if y.objectness_smooth:
                obj_t = torch.where(over, best_match, obj_t)
            else:
                obj_w[over] = 0.0
            if y.truth_thresh < 1:
                truth = best_iou > y.truth_thresh
                obj_t[truth] = best_iou[truth].square() if y.objectness_smooth else 1.0
                obj_w[truth] = 1.0
        if not y.objectness_smooth:  # smoothed, an assigned cell keeps the target above
            obj_t[assigned] = 1.0
            obj_w[assigned] = 1.0
        return obj_t, obj_w

    @staticmethod
    def _box_loss(layer, ps: torch.Tensor, tb: torch.Tensor, gi: torch.Tensor, gj: torch.Tensor,
                  anchor_px: torch.Tensor, input_wh: tuple[int, int]) -> torch.Tensor:
        """Summed box loss of the assigned predictions ``ps`` against targets ``tb`` (cx, cy, w, h px)."""
        s = layer.scale_x_y
        grid = torch.stack((gi, gj), 1).float()
        if layer.settings.iou_loss == "mse":
            # Darknet: delta = (2 - w*h) * (t - output) on the raw tw, th and on sigmoid(x) (x, y)
            scale = 2.0 - (tb[:, 2] / input_wh[0]) * (tb[:, 3] / input_wh[1])
            txy = tb[:, :2] / layer.out_stride - grid
            txy = (txy + (s - 1) / 2) / s  # the sigmoid value that decodes to the target
            twh = torch.log(tb[:, 2:] / anchor_px)
            # BCE minus its minimum (the target's entropy, no gradient) so that the logged loss is 0 at the optimum
            t = txy.clamp(1e-6, 1 - 1e-6)
            entropy = -(t * t.log() + (1 - t) * (1 - t).log())
            lxy = s * (F.binary_cross_entropy_with_logits(ps[:, :2], txy, reduction="none") - entropy).sum(1)
            lwh = 0.5 * (ps[:, 2:4] - twh).square().sum(1)
            return (scale * (lxy + lwh)).sum()
        # Darknet applies dIoU/d(box) (normalised box) straight to tx, ty (no logistic derivative)
        # and dIoU/dw * exp(tw) to tw: the values are the decoded box, the gradients straight-through
        size = torch.tensor(input_wh, device=ps.device, dtype=ps.dtype)
        raw_xy, raw_wh = ps[:, :2], ps[:, 2:4]
        xy_val = ((raw_xy.detach().sigmoid() * s - (s - 1) / 2) + grid) * layer.out_stride / size
        e = torch.exp(raw_wh.detach().clamp(max=8.0))
        xy = xy_val + (raw_xy - raw_xy.detach())
        wh = e * anchor_px / size + e * (raw_wh - raw_wh.detach())
        return (1.0 - bbox_iou_kind(torch.cat((xy, wh), 1), tb / size.repeat(2), layer.settings.iou_loss)).sum()

    @staticmethod
    def _best_iou(layer, p: torch.Tensor, img: torch.Tensor, tbox_xyxy: torch.Tensor, batch: int) -> torch.Tensor:
        """For each prediction ``(B, na, ny, nx)``, its best IoU with any target of its image."""
        pred = layer.decode(p.detach())[..., :4]  # cx, cy, w, h input pixels
        pred = box_convert(pred.reshape(batch, -1, 4), "cxcywh", "xyxy")
        out = torch.zeros(pred.shape[:2], device=p.device)
        for b in range(batch):  # a loop over images, not boxes
            t = tbox_xyxy[img == b]
            if len(t):
                out[b] = box_iou(pred[b], t).max(1).values
        return out.view(p.shape[:4])
