"""[avgpool] (global, ``avgpool_layer.c``) and [local_avgpool] (``maxpool_layer.c`` with avgpool=1).

``[local_avgpool]`` has [maxpool]'s windows (padding ``size - 1`` by default, windows starting at
``-padding/2``) and averages only the pixels inside the map: a border window holding 3 real pixels
divides by 3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..pruning.rules import PASS_THROUGH
from ..registry import Block, BuildContext, RefMap, register
from .routing import MaxPool


@register("avgpool", "avg")
class AvgPool(Block):
    """The mean of each channel over the whole map: C x 1 x 1. Channels pass through (prunable)."""

    prune_rule = PASS_THROUGH

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "AvgPool":
        return cls(ctx.c_in, ctx.stride_in)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        return 1, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "avg", "", "", inp, out, 0.0)


@register("local_avgpool", "local_avg")
class LocalAvgPool(MaxPool):
    """[maxpool]'s geometry (``MaxPool._side``), averaging the in-map pixels of each window."""

    prune_rule = PASS_THROUGH

    def __init__(self, channels: int, size: int, step: int, padding: int, stride: float) -> None:
        super().__init__(channels, size, step, padding, stride)
        self._counts: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "LocalAvgPool":
        step = s.int("stride", 1)
        s.unsupported("stride_x", str(step))
        s.unsupported("stride_y", str(step))
        size = s.int("size", step)
        padding = s.int("padding", size - 1)
        if size < 1 or step < 1 or padding < 0:
            raise s.error(f"needs size >= 1, stride >= 1, padding >= 0; got {size}, {step}, {padding}")
        return cls(ctx.c_in, size, step, padding, ctx.stride_in * step)

    def _count(self, h: int, w: int, x: torch.Tensor) -> torch.Tensor:
        """In-map pixels of each window (1, 1, out_h, out_w), cached per input size and device. Traced (ONNX
        export), it is computed from ``x`` in the graph, so a dynamic-size graph does not keep one size's."""
        (top, bottom), (left, right) = self._side(h), self._side(w)
        if torch.jit.is_tracing():
            ones = F.pad(torch.ones_like(x[:1, :1]), (left, right, top, bottom))
            return F.avg_pool2d(ones, self.size, self.step) * (self.size * self.size)
        key = (h, w, x.device, x.dtype)
        count = self._counts.get(key)
        if count is None:
            ones = F.pad(torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype), (left, right, top, bottom))
            count = F.avg_pool2d(ones, self.size, self.step) * (self.size * self.size)
            self._counts[key] = count
        return count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        (top, bottom), (left, right) = self._side(h), self._side(w)
        total = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), self.size, self.step) * (self.size * self.size)
        return total / self._count(h, w, x)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        k, s = self.size, self.step
        return LayerRow(index, "avg", "", f"{k:2d}x{k:2d}/{s:2d}", inp, out, k * k * out[2] * out[0] * out[1] / 1e9)
