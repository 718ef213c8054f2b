"""[detection]: YOLOv1's head (Darknet's DETECTION layer), its decode and loss.

Its input is a flat vector (a ``[connected]`` usually; any map is read flattened in C, H, W order,
as Darknet reads ``l.output``) of ``side * side * ((1 + coords) * num + classes)`` values, in three
blocks: ``side*side*classes`` class values (cell-major), ``side*side*num`` confidences, then
``side*side*num*coords`` boxes. ``softmax=1`` turns each cell's classes into a softmax; nothing else
is activated. ``get_detection_detections`` decodes box ``j`` of cell ``i = row * side + col``::

    x = (col + bx) / side * net_w      w = bw ** (2 if sqrt else 1) * net_w
    prob[c] = confidence * class[c]

which is the eval contract (objectness = the raw confidence), rows in Darknet's order (cell, box).

Loss (``forward_detection_layer``; each term is the squared error whose gradient is Darknet's
delta): every confidence is pulled to 0 (``noobject_scale``); in a cell holding a target (the last
target whose centre falls there) the classes regress to its one-hot (``class_scale``; with
``softmax=1`` a cross-entropy, Darknet's delta on softmax outputs), the box with the best IoU (best
RMSE while no box overlaps) regresses to the target (x, y offsets in the cell; w, h, or their
square roots with ``sqrt=1``; ``coord_scale``) and its confidence to 1, or to that IoU with
``rescore=1`` (``object_scale``). Darknet's ``forced`` / ``random`` box choices are not modelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..boxes import box_convert, box_iou
from ..cfg import ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import BuildContext, RefMap, register
from .base import Head, HeadLoss


@dataclass
class DetectionSettings:
    """The [detection] keys with Darknet's defaults (``parse_detection``)."""

    side: int = 7
    num: int = 1
    coords: int = 1
    rescore: bool = False
    softmax: bool = False
    sqrt: bool = False
    jitter: float = 0.2
    random: bool = False
    reorg: bool = False
    forced: int = 0
    max_boxes: int = 90
    coord_scale: float = 1.0
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0

    @classmethod
    def from_section(cls, s: Section) -> "DetectionSettings":
        d = cls()
        return cls(
            side=s.int("side", d.side), num=s.int("num", d.num), coords=s.int("coords", d.coords),
            rescore=s.bool("rescore", d.rescore), softmax=s.bool("softmax", d.softmax), sqrt=s.bool("sqrt", d.sqrt),
            jitter=s.float("jitter", d.jitter), random=s.float("random", float(d.random)) != 0,
            reorg=s.bool("reorg", d.reorg), forced=s.int("forced", d.forced), max_boxes=s.int("max_boxes", d.max_boxes),
            coord_scale=s.float("coord_scale", d.coord_scale), object_scale=s.float("object_scale", d.object_scale),
            noobject_scale=s.float("noobject_scale", d.noobject_scale),
            class_scale=s.float("class_scale", d.class_scale))


@register("detection")
class DetectionLayer(Head):
    """YOLOv1's head: raw flat (b, inputs) in training; (b, side*side*num, 5 + classes) in eval."""

    def __init__(self, num_classes: int, settings: DetectionSettings, net_hw: tuple[int, int],
                 channels: int, stride: float) -> None:
        super().__init__(channels, stride)
        self.num_classes = num_classes
        self.settings = settings
        self.net_hw = net_hw  # (height, width) of the [net] input: boxes are relative to it
        self.section_where = ""

    @property
    def num_inputs(self) -> int:
        s = self.settings
        return s.side * s.side * ((1 + s.coords) * s.num + self.num_classes)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "DetectionLayer":
        classes = s.int("classes", 1)
        settings = DetectionSettings.from_section(s)
        if settings.coords != 4:
            raise s.error(f"coords={settings.coords}: only coords=4 (x, y, w, h) is supported", "coords")
        if settings.reorg:
            raise s.error("'reorg=1' is not supported by this implementation", "reorg")
        if ctx.input_size is None:
            raise s.error("needs the [net] width and height (its boxes are relative to them)")
        layer = cls(classes, settings, ctx.input_size, ctx.c_in, ctx.stride_in)
        layer.section_where = s.where()
        return layer

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        """Its input, checked: the map before it must hold exactly ``num_inputs`` values (Darknet's
        YOLOv1 runs at its [net] size only)."""
        inputs = self.out_channels * in_hw[0] * in_hw[1]
        if inputs != self.num_inputs:
            s = self.settings
            raise ConfigError(f"{self.section_where or self.where}: the layer before outputs {inputs} values "
                              f"({self.out_channels} x {in_hw[0]} x {in_hw[1]}), but side={s.side}, num={s.num}, "
                              f"coords=4 and classes={self.num_classes} need {s.side}*{s.side}*((1+4)*{s.num}+"
                              f"{self.num_classes}) = {self.num_inputs}")
        return in_hw

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b, inputs) -> classes (b, cells, C) activated, confidences (b, cells, num), boxes (b, cells, num, 4)."""
        s = self.settings
        b = flat.shape[0]
        cells = s.side * s.side
        n_cls = cells * self.num_classes
        cls = flat[:, :n_cls].reshape(b, cells, self.num_classes)
        if s.softmax:
            cls = torch.softmax(cls, -1)
        conf = flat[:, n_cls:n_cls + cells * s.num].reshape(b, cells, s.num)
        box = flat[:, n_cls + cells * s.num:].reshape(b, cells, s.num, 4)
        return cls, conf, box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        flat = x.reshape(x.shape[0], -1)
        if self.training:
            return flat
        return self.decode(flat)

    def _boxes(self, box: torch.Tensor) -> torch.Tensor:
        """Raw boxes (b, cells, num, 4) -> cx, cy, w, h relative to the input (0..1)."""
        side = self.settings.side
        idx = torch.arange(side * side, device=box.device)
        col = (idx % side).to(box.dtype).view(1, -1, 1)
        row = (idx // side).to(box.dtype).view(1, -1, 1)
        wh = box[..., 2:4].square() if self.settings.sqrt else box[..., 2:4]
        return torch.stack(((box[..., 0] + col) / side, (box[..., 1] + row) / side, wh[..., 0], wh[..., 1]), -1)

    def decode(self, flat: torch.Tensor) -> torch.Tensor:
        cls, conf, box = self.split(flat)
        b, cells, num = conf.shape
        h, w = self.net_hw
        xywh = self._boxes(box) * torch.tensor([w, h, w, h], dtype=flat.dtype, device=flat.device)
        cls = cls.unsqueeze(2).expand(b, cells, num, self.num_classes)
        return torch.cat((xywh, conf.unsqueeze(-1), cls), -1).reshape(b, cells * num, 5 + self.num_classes)

    def extra_repr(self) -> str:
        s = self.settings
        return f"classes={self.num_classes}, side={s.side}, num={s.num}, sqrt={int(s.sqrt)}"

    # --- what the code above the model asks a head -----------------------------------------------
    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """Darknet's make_detection_layer prints "Detection Layer"."""
        return LayerRow(index, "Detection Layer", "", "", inp, out, 0.0)

    @classmethod
    def make_loss(cls, heads: Sequence["DetectionLayer"]) -> HeadLoss:
        return DetectionLoss(heads)

    def nms_settings(self) -> dict[str, Any]:
        return {}

    @property
    def jitter(self) -> float:
        return self.settings.jitter

    def training_problem(self) -> str | None:
        return None

    def settings_row(self) -> tuple[str, str, str]:
        s = self.settings
        return ("detection", f"side={s.side} num={s.num} sqrt={int(s.sqrt)} rescore={int(s.rescore)} "
                             f"coord={s.coord_scale} object={s.object_scale} noobject={s.noobject_scale} "
                             f"class={s.class_scale}", "cfg [detection]")


class DetectionLoss(HeadLoss):
    """The summed (box, obj, cls) loss of [detection] heads (see the module docstring)."""

    def __init__(self, heads: Sequence[DetectionLayer]) -> None:
        self.heads = list(heads)

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = outputs[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        lbox = lobj = lcls = torch.zeros((), device=device)
        for head, flat in zip(self.heads, outputs):
            box, obj, cls = self._one(head, flat.float(), targets)
            lbox, lobj, lcls = lbox + box, lobj + obj, lcls + cls
        return lbox, lobj, lcls

    @staticmethod
    def _one(head: DetectionLayer, flat: torch.Tensor, targets: torch.Tensor):
        s = head.settings
        device = flat.device
        cls, conf, box = head.split(flat)
        b, cells, num = conf.shape
        conf_w = torch.ones_like(conf)  # noobject everywhere but the chosen boxes
        zero = torch.zeros((), device=device)
        if not len(targets):
            return zero, (0.5 * s.noobject_scale * conf.square()).sum(), zero
        # one target per cell: the last one whose centre falls in it
        col = (targets[:, 2] * s.side).long().clamp(0, s.side - 1)
        row = (targets[:, 3] * s.side).long().clamp(0, s.side - 1)
        img = targets[:, 0].long()
        cell = img * cells + row * s.side + col
        order = torch.arange(len(cell), device=device)
        last = torch.full((b * cells,), -1, dtype=torch.long, device=device).scatter_reduce(0, cell, order, "amax")
        t = targets[last[cell] == order]
        img, cell_i = t[:, 0].long(), (t[:, 3] * s.side).long().clamp(0, s.side - 1) * s.side + \
            (t[:, 2] * s.side).long().clamp(0, s.side - 1)
        tbox = t[:, 2:6]  # cx, cy, w, h relative

        with torch.no_grad():
            pred = head._boxes(box)[img, cell_i]  # (M, num, 4) relative
            ious = torch.stack([torch.diagonal(box_iou(box_convert(pred[:, j], "cxcywh", "xyxy"),
                                                        box_convert(tbox, "cxcywh", "xyxy"))) for j in range(num)], 1)
            rmse = (pred - tbox[:, None]).square().sum(-1).sqrt()
            any_overlap = ious.max(1).values > 0
            best = torch.where(any_overlap, ious.argmax(1), rmse.argmin(1))
            best_iou = ious.gather(1, best[:, None]).squeeze(1)

        conf_w[img, cell_i, best] = 0.0
        lobj = (0.5 * s.noobject_scale * conf.square() * conf_w).sum()
        c = conf[img, cell_i, best]
        target_obj = best_iou if s.rescore else torch.ones_like(c)
        lobj = lobj + (0.5 * s.object_scale * (c - target_obj).square()).sum()

        tcls = t[:, 1].long()
        if s.softmax:
            logits = flat[:, :cells * head.num_classes].reshape(b, cells, head.num_classes)[img, cell_i]
            lcls = s.class_scale * F.cross_entropy(logits, tcls, reduction="sum")
        else:
            onehot = F.one_hot(tcls, head.num_classes).float()
            lcls = (0.5 * s.class_scale * (cls[img, cell_i] - onehot).square()).sum()

        pb = box[img, cell_i, best]  # raw x, y, w, h
        side_t = torch.stack((tbox[:, 0] * s.side - (cell_i % s.side), tbox[:, 1] * s.side - (cell_i // s.side)), 1)
        wh_t = tbox[:, 2:].sqrt() if s.sqrt else tbox[:, 2:]
        lbox = 0.5 * s.coord_scale * ((pb[:, :2] - side_t).square().sum() + (pb[:, 2:] - wh_t).square().sum())
        return lbox, lobj, lcls
