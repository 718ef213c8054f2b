"""[bottleneck]: the ResNet-50 bottleneck, optionally with an ACNet 3x3 (``asymmetric=1``)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..cfg import Section
from ..registry import Block, BuildContext, WeightUnit, register
from .layers import ACUnit, ConvBN, make_activation, make_downsample, positive


@register("bottleneck")
class Bottleneck(Block):
    """1x1 reduce -> 3x3 (stride; ACNet block if asymmetric) -> 1x1 expand, + residual, act."""

    def __init__(self, c_in: int, planes: int, stride: int, expansion: int, asymmetric: bool,
                 act: nn.Module, out_stride: float) -> None:
        out = planes * expansion
        super().__init__(out, out_stride)
        self.asymmetric = asymmetric
        self.conv1 = ConvBN(c_in, planes, 1, act=act)
        self.conv2: nn.Module = (ACUnit(planes, planes, 3, stride, act=act) if asymmetric
                                 else ConvBN(planes, planes, 3, stride, act=act))
        self.conv3 = ConvBN(planes, out, 1)
        self.downsample = make_downsample(c_in, out, stride)
        self.act = act

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Bottleneck":
        planes = positive(s, "planes")
        stride = positive(s, "stride", 1)
        expansion = positive(s, "expansion", 4)
        asymmetric = s.bool("asymmetric", False)
        act = make_activation(s, "relu")
        return cls(ctx.c_in, planes, stride, expansion, asymmetric, act, ctx.stride_in * stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.act(y + (self.downsample(x) if self.downsample is not None else x))

    def weight_units(self) -> Iterator[WeightUnit]:
        """conv1 CB, conv2 CB (or square, hor, ver CBs), conv3 CB, downsample CB if present."""
        for unit in (self.conv1, self.conv2, self.conv3, self.downsample):
            if unit is not None:
                yield from unit.weight_units()

    def deploy(self) -> tuple[Block, dict[str, str | None]]:
        """ACNet 3x3 -> one 3x3 conv + identity BN, so the section stays a plain [bottleneck]."""
        if not self.asymmetric:
            return self, {}
        self.conv2 = self.conv2.deployed_unit(keep_bn=True)
        self.asymmetric = False
        return self, {"asymmetric": None}

