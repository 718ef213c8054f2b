"""[yolo]: anchors, decoding and the loss settings of one detection head (no loss inside)."""
from __future__ import annotations

import torch

from ..cfg import Section
from ..registry import Block, BuildContext, register

IOU_LOSSES = ("mse", "iou", "giou", "diou", "ciou")


@register("yolo")
class YOLOLayer(Block):
    """Raw head output in training; decoded boxes (input pixels) in eval."""

    is_output = True

    def __init__(self, anchors: torch.Tensor, num_classes: int, stride: float, scale_x_y: float,
                 new_coords: bool, channels: int) -> None:
        super().__init__(channels, stride)
        self.register_buffer("anchors", anchors)  # (na, 2) in input pixels, mask order
        self.num_classes = num_classes
        self.scale_x_y = scale_x_y
        self.new_coords = new_coords
        self._grids: dict[tuple, torch.Tensor] = {}
        # loss / training settings, typed once here and read by the trainer
        self.mask: list[int] = []
        self.all_anchors: list[tuple[float, float]] = []
        self.jitter = 0.3
        self.ignore_thresh = 0.5
        self.truth_thresh = 1.0
        self.iou_thresh = 1.0
        self.random = False
        self.iou_loss = "mse"
        self.iou_normalizer = 1.0
        self.cls_normalizer = 1.0
        self.obj_normalizer = 1.0
        self.max_delta = float("inf")
        self.label_smooth_eps = 0.0
        self.resize = 1.0
        self.nms_kind = "greedynms"
        self.beta_nms = 0.6

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
        if len(flat) % 2:
            raise s.error(f"anchors must be width,height pairs; got {len(flat)} numbers", "anchors")
        pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        num = s.int("num", len(pairs))
        if num != len(pairs):
            raise s.error(f"num={num} but {len(pairs)} anchor pairs are given", "num")
        mask = s.ints("mask", list(range(num)))
        bad = [m for m in mask if not 0 <= m < num]
        if bad:
            raise s.error(f"mask indices {bad} are outside the {num} anchors", "mask")
        expected = len(mask) * (classes + 5)
        if ctx.c_in != expected:
            raise s.error(f"the layer before has {ctx.c_in} filters, but mask ({len(mask)} anchors) and "
                          f"classes={classes} need {len(mask)} * ({classes} + 5) = {expected}")
        anchors = torch.tensor([pairs[m] for m in mask], dtype=torch.float32)
        layer = cls(anchors, classes, ctx.stride_in, s.float("scale_x_y", 1.0),
                    s.bool("new_coords", False), ctx.c_in)
        layer.mask = mask
        layer.all_anchors = pairs
        layer.jitter = s.float("jitter", 0.2)
        layer.ignore_thresh = s.float("ignore_thresh", 0.5)
        layer.truth_thresh = s.float("truth_thresh", 1.0)
        layer.iou_thresh = s.float("iou_thresh", 1.0)
        layer.random = s.float("random", 0.0) != 0
        layer.iou_loss = s.choice("iou_loss", IOU_LOSSES, "mse")
        layer.iou_normalizer = s.float("iou_normalizer", 0.75)
        layer.cls_normalizer = s.float("cls_normalizer", 1.0)
        layer.obj_normalizer = s.float("obj_normalizer", 1.0)
        layer.max_delta = s.float("max_delta", float("inf"))
        layer.label_smooth_eps = s.float("label_smooth_eps", 0.0)
        layer.resize = s.float("resize", 1.0)
        layer.nms_kind = s.str("nms_kind", "greedynms")
        layer.beta_nms = s.float("beta_nms", 0.6)
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
        return torch.cat(((xy + grid) * self.stride, wh, rest), -1)

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, anchors={self.anchors.tolist()}, stride={self.stride}, "
                f"scale_x_y={self.scale_x_y}")

