"""[batchnorm] (``batchnorm_layer.c``): a BatchNorm on its own, after any layer.

``.weights``: biases, scales, rolling mean, rolling variance (C floats each), as Darknet's
``load_batchnorm_weights`` reads them.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import Block, BuildContext, register
from ..weights import OrderedUnit
from .layers import BN_EPS, BN_MOMENTUM


@register("batchnorm")
class BatchNorm(Block):
    """``(x - mean) / sqrt(var + 1e-5) * scale + bias`` per channel. Pruning is refused."""

    prune_rule = None

    def __init__(self, channels: int, stride: float) -> None:
        super().__init__(channels, stride)
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "BatchNorm":
        return cls(ctx.c_in, ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)

    def weight_units(self) -> Iterator[OrderedUnit]:
        bn = self.bn
        yield OrderedUnit((bn,), (bn.bias, bn.weight, bn.running_mean, bn.running_var))

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "batchnorm", "", "", inp, out, 0.0)
