"""[bottleneck]: the ResNet-50 bottleneck, optionally with an ACNet 3x3 (``asymmetric=1``)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..cfg import Section
from ..pruning.graph import ChannelGraph
from ..pruning.rules import Count, Named, Rule, act_of_sum, residual
from ..registry import Block, BuildContext, WeightUnit, register
from .layers import ACUnit, ConvBN, make_activation, make_downsample, positive


def _trace_bottleneck(b: "Bottleneck", g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """conv1 and conv2 outputs are one ``planes``; the output goes with the residual."""
    planes = b.conv1.conv.out_channels
    a = g.conv(b.conv1, x, g.tensor(planes, f"{b.where} conv1"))
    c = g.conv(b.conv2, a, g.tensor(planes, f"{b.where} conv2"))
    g.tie(g.nodes(a), g.nodes(c))  # one `planes`
    y = g.conv(b.conv3, c, g.tensor(b.out_channels, f"{b.where} conv3"))
    out = residual(b, g, x, y, b.downsample, act_of_sum(b.act))
    g.constrain([g.nodes(a), g.nodes(out)], lambda p, o: p >= 1 and o % p == 0,
                f"{b.where}: out = planes * expansion")
    return out, {"planes": a, "out": out}


def _edit_bottleneck(b: "Bottleneck", s: Section, n: Count) -> dict:
    """``planes`` and ``expansion`` = out / planes (a whole number)."""
    p, o = n("planes"), n("out")
    if p == b.conv1.conv.out_channels and o == b.out_channels:
        return {}
    return {"planes": str(p), "expansion": str(o // p)}


@register("bottleneck")
class Bottleneck(Block):
    """1x1 reduce -> 3x3 (stride; ACNet block if asymmetric) -> 1x1 expand, + residual, act."""

    prune_rule = Rule(_trace_bottleneck, _edit_bottleneck)

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

