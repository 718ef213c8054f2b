"""[yolo]: one YOLOv3/v4 detection head: anchors, its settings with Darknet's defaults, its decode.

Its loss (Darknet's assignment across every [yolo] layer) is :mod:`yolo.heads.yolo_loss`, built
through :meth:`YOLOLayer.make_loss` so that inference never imports it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..cfg import CfgWarning, Section
from ..netconfig import accept_declared, training_refusals
from ..registry import BuildContext, register
from .base import Head, HeadLoss

IOU_LOSSES = ("mse", "iou", "giou", "diou", "ciou")


def darknet_anchor_pairs(s: Section, flat: list[float], num: int, mask: list[int]) -> list[tuple[float, float]]:
    """The anchors as ``parse_yolo`` reads them: ``num`` pairs, the first ``2 * num`` values, zeros where fewer
    are written. A mask index past ``num`` makes Darknet read outside its array (undefined): we take the
    pair the file writes there (cspx-p7-mish.cfg: num=16, 20 pairs, mask 16..19), with a warning."""
    if num < 1:
        raise s.error(f"expected num >= 1, got {num}", "num")
    bad = [m for m in mask if m < 0 or (m >= num and 2 * m + 1 >= len(flat))]
    if bad:
        raise s.error(f"mask indices {bad} are outside the {num} anchors (num) and the "
                      f"{len(flat) // 2} pairs written in anchors", "mask")
    count = max([num] + [m + 1 for m in mask])
    if count > num:
        warnings.warn(f"{s.where('mask')}: mask indices {[m for m in mask if m >= num]} are past num={num}: "
                      "Darknet reads outside its anchors there (undefined); the pairs written in anchors are used",
                      CfgWarning, stacklevel=4)
    elif len(flat) < 2 * num:
        warnings.warn(f"{s.where('anchors')}: {len(flat)} numbers for num={num} anchors: Darknet sets the "
                      f"{2 * num - len(flat)} missing to 0", CfgWarning, stacklevel=4)
    values = flat[:2 * count] + [0.0] * max(0, 2 * count - len(flat))
    return [(values[i], values[i + 1]) for i in range(0, 2 * count, 2)]


@dataclass
class YoloSettings:
    """The [yolo] keys decoding does not read, with Darknet's defaults (``parse_yolo``), stated once."""

    jitter: float = 0.2
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    random: bool = False  # multiscale training
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    cls_normalizer: float = 1.0
    obj_normalizer: float = 1.0
    max_delta: float = float("inf")
    label_smooth_eps: float = 0.0
    objectness_smooth: bool = False  # objectness targets are IoUs (see yolo_loss)
    resize: float = 1.0
    nms_kind: str = "default"
    beta_nms: float = 0.6

    @classmethod
    def from_section(cls, s: Section) -> "YoloSettings":
        d = cls()
        return cls(
            jitter=s.float("jitter", d.jitter), ignore_thresh=s.float("ignore_thresh", d.ignore_thresh),
            truth_thresh=s.float("truth_thresh", d.truth_thresh), iou_thresh=s.float("iou_thresh", d.iou_thresh),
            random=s.float("random", float(d.random)) != 0, iou_loss=s.choice("iou_loss", IOU_LOSSES, d.iou_loss),
            iou_normalizer=s.float("iou_normalizer", d.iou_normalizer),
            cls_normalizer=s.float("cls_normalizer", d.cls_normalizer),
            obj_normalizer=s.float("obj_normalizer", d.obj_normalizer), max_delta=s.float("max_delta", d.max_delta),
            label_smooth_eps=s.float("label_smooth_eps", d.label_smooth_eps), resize=s.float("resize", d.resize),
            objectness_smooth=s.int("objectness_smooth", int(d.objectness_smooth)) != 0,
            nms_kind=s.str("nms_kind", d.nms_kind), beta_nms=s.float("beta_nms", d.beta_nms))


@register("yolo")
class YOLOLayer(Head):
    """Raw head output in training; decoded boxes (input pixels) in eval."""

    def __init__(self, anchors: torch.Tensor, num_classes: int, stride: float, scale_x_y: float,
                 new_coords: bool, channels: int) -> None:
        super().__init__(channels, stride)
        self.register_buffer("anchors", anchors)  # (na, 2) in input pixels, mask order
        self.num_classes = num_classes
        self.scale_x_y = scale_x_y
        self.new_coords = new_coords
        self._grids: dict[tuple, torch.Tensor] = {}
        self.mask: list[int] = list(range(len(anchors)))
        self.all_anchors: list[tuple[float, float]] = []  # every anchor of the [yolo] section (set by from_section)
        self.settings = YoloSettings()
        self.refused: list[str] = []  # declared training keys the trainer does not implement (training_problem)

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    @property
    def num_attrib(self) -> int:
        return 5 + self.num_classes

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "YOLOLayer":
        classes = s.int("classes", 20)
        flat = s.floats("anchors")
        num = s.int("num", (len(flat) + 1) // 2)
        mask = s.ints("mask", list(range(num)))
        pairs = darknet_anchor_pairs(s, flat, num, mask)
        expected = len(mask) * (classes + 5)
        if ctx.c_in != expected:
            raise s.error(f"the layer before has {ctx.c_in} filters, but mask ({len(mask)} anchors) and "
                          f"classes={classes} need {len(mask)} * ({classes} + 5) = {expected}")
        anchors = torch.tensor([pairs[m] for m in mask], dtype=torch.float32)
        layer = cls(anchors, classes, ctx.stride_in, s.float("scale_x_y", 1.0),
                    s.bool("new_coords", False), ctx.c_in)
        layer.mask = mask
        layer.all_anchors = pairs
        layer.settings = YoloSettings.from_section(s)
        # embedding_layer (contrastive tracking): Darknet's CPU forward never copies the embeddings, so
        # they change no output; the layer it names must exist. The tracker's keys change no output either.
        if "embedding_layer" in s:
            layer.embedding_layer = ctx.layer_index(s, s.int("embedding_layer"), "embedding_layer")
        for key in ("track_history_size", "sim_thresh", "dets_for_show", "dets_for_track", "track_ciou_norm"):
            s.float(key, 0.0)
        accept_declared(s, "yolo")  # yolo.params.CFG_KEYS: read, with why they change nothing here
        layer.refused = training_refusals(s, "yolo", where=False)
        return layer

    def _grid(self, ny: int, nx: int, like: torch.Tensor) -> torch.Tensor:
        key = (ny, nx, like.device, like.dtype)
        grid = self._grids.get(key)
        if grid is None:
            ys, xs = torch.meshgrid(torch.arange(ny, device=like.device, dtype=like.dtype),
                                    torch.arange(nx, device=like.device, dtype=like.dtype), indexing="ij")
            grid = torch.stack((xs, ys), -1).view(1, 1, ny, nx, 2)
            self._grids[key] = grid
        return grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):  # decode (and the loss) in float32 at least
            x = x.float()
        b, _, ny, nx = x.shape
        p = x.view(b, self.num_anchors, self.num_attrib, ny, nx).permute(0, 1, 3, 4, 2)
        if self.training:
            return p.contiguous()  # (b, na, ny, nx, 5 + classes), raw
        return self.decode(p).reshape(b, -1, self.num_attrib)

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        """Raw (b, na, ny, nx, 5+C) -> boxes cx, cy, w, h (input pixels), objectness, class probs."""
        ny, nx = p.shape[2:4]
        grid = self._grid(ny, nx, p)
        anchors = self.anchors.to(p.dtype).view(1, -1, 1, 1, 2)
        s = self.scale_x_y
        if self.new_coords:
            xy = p[..., :2] * s - (s - 1) / 2
            wh = (2 * p[..., 2:4]).square() * anchors
            rest = p[..., 4:]
        else:
            xy = torch.sigmoid(p[..., :2])
            if s != 1:
                xy = xy * s - (s - 1) / 2
            wh = torch.exp(p[..., 2:4]) * anchors
            rest = torch.sigmoid(p[..., 4:])
        return torch.cat(((xy + grid) * self.out_stride, wh, rest), -1)

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, anchors={self.anchors.tolist()}, stride={self.out_stride}, "
                f"scale_x_y={self.scale_x_y}")

    # --- what the code above the model asks a head (see yolo.heads.base) -----------------------
    @classmethod
    def make_loss(cls, heads: Sequence["YOLOLayer"]) -> HeadLoss:
        from .yolo_loss import YoloLoss  # training only: inference never imports the loss

        return YoloLoss(heads)

    def nms_settings(self) -> dict[str, Any]:
        return {"nms_kind": self.settings.nms_kind, "beta_nms": self.settings.beta_nms}

    @property
    def jitter(self) -> float:
        return self.settings.jitter

    @property
    def multiscale(self) -> bool:
        return self.settings.random

    def training_problem(self) -> str | None:
        if self.new_coords:
            return "new_coords=1 is not supported by the trainer"
        return "; ".join(self.refused) or None

    @torch.no_grad()
    def init_bias(self, bias: torch.Tensor, input_hw: tuple[int, int], num_heads: int,
                  objects_per_image: float) -> None:
        """Objectness ~ ``objects_per_image`` spread over every cell and anchor of every head,
        classes ~ uniform (as mmdetection does)."""
        if bias.numel() != self.num_anchors * self.num_attrib:
            return
        cells = (input_hw[1] / self.out_stride) * (input_hw[0] / self.out_stride)
        b = bias.view(self.num_anchors, self.num_attrib)
        b[:, 4] = math.log(objects_per_image / (cells * num_heads * self.num_anchors))
        b[:, 5:] = math.log(1.0 / max(self.num_classes - 0.99, 1.0))

    def settings_row(self) -> tuple[str, str, str]:
        y = self.settings
        return ("yolo", f"iou_loss={y.iou_loss} iou_norm={y.iou_normalizer} cls_norm={y.cls_normalizer} "
                        f"ignore={y.ignore_thresh} truth={y.truth_thresh} iou_thresh={y.iou_thresh} "
                        f"scale_x_y={self.scale_x_y}" + (" objectness_smooth=1" if y.objectness_smooth else ""),
                "cfg [yolo]")

    def clear_cache(self) -> None:
        self._grids = {}
