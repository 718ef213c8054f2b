"""[convolutional]: its keys (``ConvSpec``, shared with ACNet's variant) and the plain block."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape, conv_row
from ..pruning.rules import Rule, edit_conv, trace_conv
from ..registry import Block, BuildContext, WeightUnit, register
from .layers import ConvBN, conv_out_hw, make_activation


@dataclass
class ConvSpec:
    """The keys of a [convolutional] section, typed and checked once (plain and ACNet alike)."""

    filters: int
    size: int
    stride: int
    padding: int
    groups: int
    dilation: int
    bn: bool
    act: nn.Module

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "ConvSpec":
        filters = s.int("filters", 1)
        size = s.int("size", 1)
        stride = s.int("stride", 1)
        pad = s.bool("pad", False)
        padding = s.int("padding", size // 2 if pad else 0)
        groups = s.int("groups", 1)
        dilation = s.int("dilation", 1)
        bn = s.bool("batch_normalize", False)
        act = make_activation(s)
        s.unsupported("stride_x", str(stride))
        s.unsupported("stride_y", str(stride))
        for key in ("binary", "xnor", "antialiasing", "deform"):
            s.unsupported(key, "0")
        if min(filters, size, stride, groups, dilation) < 1:
            raise s.error("filters, size, stride, groups and dilation must be >= 1")
        if ctx.c_in % groups or filters % groups:
            raise s.error(f"groups={groups} must divide the input channels ({ctx.c_in}) "
                          f"and filters ({filters})", "groups")
        if size == 1:
            dilation = 1  # as Darknet
        return cls(filters, size, stride, padding, groups, dilation, bn, act)


@register("convolutional", "conv")
class Convolutional(Block):
    """A Darknet [convolutional] section.

    Pruning: nothing coupled across input and output, except a depthwise conv (groups = in = out:
    channel c in with channel c out; ``groups`` follows ``filters``); other grouped convs and convs
    without BatchNorm keep all their channels.
    """

    prune_rule = Rule(trace_conv, edit_conv)

    def __init__(self, unit: ConvBN, stride: float) -> None:
        super().__init__(unit.conv.out_channels, stride)
        self.unit = unit

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Block":
        spec = ConvSpec.from_section(s, ctx)
        unit = ConvBN(ctx.c_in, spec.filters, spec.size, spec.stride, spec.padding * spec.dilation,
                      spec.groups, spec.dilation, spec.bn, spec.act)
        return cls(unit, ctx.stride_in * spec.stride)

    def out_hw(self, in_hw: tuple[int, int], refs: list) -> tuple[int, int]:
        return conv_out_hw(self.unit.conv, in_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x)

    def weight_units(self) -> Iterator[WeightUnit]:
        return self.unit.weight_units()

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return conv_row(index, inp, out, convs)

