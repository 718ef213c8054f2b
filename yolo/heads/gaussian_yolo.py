"""[Gaussian_yolo]: Gaussian YOLOv3's head (each box coordinate is a mean and an uncertainty).

Layout: per anchor of ``mask``, 8 box entries (mu_x, sigma_x, mu_y, sigma_y, mu_w, sigma_w, mu_h,
sigma_h), objectness, classes. Darknet's forward applies the logistic to everything but mu_w, mu_h,
then ``mu_x, mu_y <- v * scale_x_y - (scale_x_y - 1) / 2``; ``get_gaussian_yolo_detections``
decodes as [yolo] does (x = (col + mu_x) / W, w = exp(mu_w) * anchor_w / net_w) and scores each
class ``objectness * class * (1 - mean(sigma_x, sigma_y, sigma_w, sigma_h))``. The eval contract
here carries the objectness and ``class * (1 - mean sigma)``, so
:func:`yolo.darknet_map.darknet_nms`' objectness x probability is Darknet's score.

Loss: the [yolo] loss (:mod:`yolo.heads.yolo_loss`, Darknet's assignment, objectness, classes and
the ``iou_loss`` box term) on the mean entries, plus the Gaussian negative log-likelihood of the
assigned targets under each predicted (mu, sigma), which trains the uncertainties
(``uc_normalizer`` scales it; each sigma enters as ``sigma + 0.3``, Darknet's ``sigma_const``);
with an IoU box loss the means get no NLL gradient (Darknet's IoU deltas replace its mean deltas
there). The NLL may go below 0, so the logged box loss can be negative. Darknet's exact
per-coordinate Gaussian deltas (their ``2 - w*h`` scale and clipping) are not reproduced.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..boxes import wh_iou
from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import BuildContext, register
from .base import Head, HeadLoss
from .yolo import YOLOLayer, YoloSettings

MEANS = [0, 2, 4, 6]
SIGMA_CONST = 0.3  # Darknet's sigma_const: added to each sigma in the likelihood (keeps its gradient bounded)
SIGMAS = [1, 3, 5, 7]


@register("gaussian_yolo")  # the parser lower-cases section names
class GaussianYOLOLayer(Head):
    """Raw (b, na, ny, nx, 9 + C) in training; decoded boxes with uncertainty-weighted classes in eval."""

    def __init__(self, anchors: torch.Tensor, num_classes: int, stride: float, scale_x_y: float,
                 channels: int) -> None:
        super().__init__(channels, stride)
        self.register_buffer("anchors", anchors)  # (na, 2) input pixels, mask order
        self.num_classes = num_classes
        self.scale_x_y = scale_x_y
        self.new_coords = False
        self.mask: list[int] = list(range(len(anchors)))
        self.all_anchors: list[tuple[float, float]] = []
        self.settings = YoloSettings()
        self.uc_normalizer = 1.0
        self._grids: dict[tuple, torch.Tensor] = {}

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    @property
    def num_attrib(self) -> int:
        return 9 + self.num_classes

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "GaussianYOLOLayer":
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
        expected = len(mask) * (classes + 9)
        if ctx.c_in != expected:
            raise s.error(f"the layer before has {ctx.c_in} filters, but mask ({len(mask)} anchors) and "
                          f"classes={classes} need {len(mask)} * ({classes} + 9) = {expected}")
        layer = cls(torch.tensor([pairs[m] for m in mask], dtype=torch.float32), classes, ctx.stride_in,
                    s.float("scale_x_y", 1.0), ctx.c_in)
        layer.mask = mask
        layer.all_anchors = pairs
        layer.settings = YoloSettings.from_section(s)
        layer.uc_normalizer = s.float("uc_normalizer", 1.0)
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
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        b, _, ny, nx = x.shape
        p = x.view(b, self.num_anchors, self.num_attrib, ny, nx).permute(0, 1, 3, 4, 2)
        if self.training:
            return p.contiguous()
        return self.decode(p).reshape(b, -1, 5 + self.num_classes)

    def activate(self, p: torch.Tensor) -> torch.Tensor:
        """Raw (..., 9 + C) -> Darknet's ``l.output`` entries (logistic but mu_w, mu_h; scaled mu_x, mu_y)."""
        a = torch.sigmoid(p)
        a = torch.cat((a[..., :4], p[..., 4:5], a[..., 5:6], p[..., 6:7], a[..., 7:]), -1)
        s = self.scale_x_y
        if s != 1:
            xy = a[..., [0, 2]] * s - (s - 1) / 2
            a = torch.cat((xy[..., :1], a[..., 1:2], xy[..., 1:2], a[..., 3:]), -1)
        return a

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        """Raw (b, na, ny, nx, 9 + C) -> cx, cy, w, h (input pixels), objectness, class x (1 - mean sigma)."""
        ny, nx = p.shape[2:4]
        a = self.activate(p)
        grid = self._grid(ny, nx, p)
        anchors = self.anchors.to(p.dtype).view(1, -1, 1, 1, 2)
        xy = (a[..., [0, 2]] + grid) * self.out_stride
        wh = torch.exp(a[..., [4, 6]]) * anchors
        certainty = 1.0 - a[..., SIGMAS].mean(-1, keepdim=True)
        return torch.cat((xy, wh, a[..., 8:9], a[..., 9:] * certainty), -1)

    def darknet_output(self, x: torch.Tensor) -> torch.Tensor:
        """Darknet's ``l.output`` for a (1, C, H, W) input, as (C, H, W)."""
        b, _, ny, nx = x.shape
        a = self.activate(x.view(b, self.num_anchors, self.num_attrib, ny, nx).permute(0, 1, 3, 4, 2))
        return a.permute(0, 1, 4, 2, 3).reshape(x.shape)[0]

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, anchors={self.anchors.tolist()}, stride={self.out_stride}, "
                f"scale_x_y={self.scale_x_y}")

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """As Darknet's make_gaussian_yolo_layer prints it (the parser lower-cases our section names)."""
        return LayerRow(index, "Gaussian_yolo", "", "", inp, out, 0.0)

    def mean_view(self) -> YOLOLayer:
        """A plain [yolo] layer with these anchors and settings, for the mean entries' loss."""
        view = YOLOLayer(self.anchors.clone(), self.num_classes, self.out_stride, self.scale_x_y, False,
                         self.out_channels)
        view.mask, view.all_anchors, view.settings, view.where = self.mask, self.all_anchors, self.settings, self.where
        return view

    # --- what the code above the model asks a head -----------------------------------------------
    @classmethod
    def make_loss(cls, heads: Sequence["GaussianYOLOLayer"]) -> HeadLoss:
        return GaussianYoloLoss(heads)

    def nms_settings(self) -> dict[str, Any]:
        return {"nms_kind": self.settings.nms_kind, "beta_nms": self.settings.beta_nms}

    @property
    def jitter(self) -> float:
        return self.settings.jitter

    @property
    def multiscale(self) -> bool:
        return self.settings.random

    def training_problem(self) -> str | None:
        if self.settings.objectness_smooth:  # gaussian_yolo_layer.c smooths differently from [yolo] (IoU^2 targets)
            return "objectness_smooth=1 in [Gaussian_yolo] is not implemented by the trainer"
        return None

    @torch.no_grad()
    def init_bias(self, bias: torch.Tensor, input_hw: tuple[int, int], num_heads: int,
                  objects_per_image: float) -> None:
        """As [yolo]: objectness ~ ``objects_per_image`` over every cell and anchor, classes uniform."""
        if bias.numel() != self.num_anchors * self.num_attrib:
            return
        cells = (input_hw[1] / self.out_stride) * (input_hw[0] / self.out_stride)
        b = bias.view(self.num_anchors, self.num_attrib)
        b[:, 8] = math.log(objects_per_image / (cells * num_heads * self.num_anchors))
        b[:, 9:] = math.log(1.0 / max(self.num_classes - 0.99, 1.0))

    def settings_row(self) -> tuple[str, str, str]:
        y = self.settings
        return ("Gaussian_yolo", f"iou_loss={y.iou_loss} iou_norm={y.iou_normalizer} cls_norm={y.cls_normalizer} "
                                 f"uc_norm={self.uc_normalizer} ignore={y.ignore_thresh} "
                                 f"scale_x_y={self.scale_x_y}", "cfg [Gaussian_yolo]")

    def clear_cache(self) -> None:
        self._grids = {}


class GaussianYoloLoss(HeadLoss):
    """[yolo]'s loss on the means plus the Gaussian NLL of the targets (see the module docstring)."""

    def __init__(self, heads: Sequence[GaussianYOLOLayer]) -> None:
        from .yolo_loss import YoloLoss  # training only

        self.heads = list(heads)
        self.yolo = YoloLoss([h.mean_view() for h in self.heads])
        self.keep = MEANS + list(range(8, 9 + self.heads[0].num_classes))

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lbox, lobj, lcls = self.yolo([p[..., self.keep] for p in outputs], targets, input_hw)
        device = outputs[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        if not len(targets):
            return lbox, lobj, lcls
        h_in, w_in = input_hw
        tbox = targets[:, 2:6] * torch.tensor([w_in, h_in, w_in, h_in], device=device)
        all_anchors = self.yolo.all_anchors.to(device)
        best = wh_iou(tbox[:, 2:], all_anchors).argmax(1)
        for head, p in zip(self.heads, outputs):
            p = p.float()
            _, na, ny, nx, _ = p.shape
            mask = torch.tensor(head.mask, device=device)
            ti, ai = (best[:, None] == mask[None]).nonzero(as_tuple=True)
            if not len(ti):
                continue
            gi = (tbox[ti, 0] / head.out_stride).long().clamp(0, nx - 1)
            gj = (tbox[ti, 1] / head.out_stride).long().clamp(0, ny - 1)
            a = head.activate(p[targets[ti, 0].long(), ai, gj, gi])
            tb = tbox[ti]
            t = torch.stack((tb[:, 0] / head.out_stride - gi, tb[:, 1] / head.out_stride - gj,
                             torch.log(tb[:, 2] / head.anchors[ai, 0]), torch.log(tb[:, 3] / head.anchors[ai, 1])), 1)
            mu = a[:, MEANS]
            if head.settings.iou_loss != "mse":
                mu = mu.detach()
            sigma = a[:, SIGMAS] + SIGMA_CONST
            nll = torch.log(sigma) + 0.5 * ((t - mu) / sigma).square()  # -log N(t | mu, sigma) + const
            lbox = lbox + head.uc_normalizer * nll.sum()
        return lbox, lobj, lcls
