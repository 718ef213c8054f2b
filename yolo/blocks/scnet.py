"""[scbottleneck]: the SCNet self-calibrated bottleneck (two halves, one self-calibrated)."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..cfg import ConfigError, Section
from ..pruning.graph import ChannelGraph
from ..pruning.rules import Count, Named, Rule, act_of_sum, identity, residual
from ..registry import Block, BuildContext, WeightUnit, register
from .layers import ConvBN, make_activation, make_downsample, positive


class SCConv(nn.Module):
    """Self-calibration: a gate from a pooled (coarse) view of the map scales the 3x3 response."""

    def __init__(self, channels: int, stride: int, pooling_r: int, act: nn.Module) -> None:
        super().__init__()
        self.pooling_r = pooling_r
        self.k2 = ConvBN(channels, channels, 3)  # on the pooled map
        self.k3 = ConvBN(channels, channels, 3)
        self.k4 = ConvBN(channels, channels, 3, stride, act=act)

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        size = b.shape[-2:]
        if min(size) < self.pooling_r:
            raise ValueError(f"[scbottleneck]: feature map {tuple(size)} is smaller than "
                             f"pooling_r={self.pooling_r}; use a larger input")
        k2 = self.k2(F.avg_pool2d(b, self.pooling_r, self.pooling_r))
        gate = torch.sigmoid(b + F.interpolate(k2, size=size, mode="nearest"))
        return self.k4(self.k3(b) * gate)

    def weight_units(self) -> Iterator[WeightUnit]:
        for unit in (self.k2, self.k3, self.k4):
            yield from unit.weight_units()


def _trace_scbottleneck(b: "SCBottleneck", g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """The six half-width maps (conv1_a, k1, conv1_b, k2, k3 via the gate, k4) are one ``planes``; the
    output goes with the residual; out = 8 x half."""
    h, w = b.conv1_a.conv.out_channels, b.where
    sc = b.scconv
    a1 = g.conv(b.conv1_a, x, g.tensor(h, f"{w} conv1_a"))
    a2 = g.conv(b.k1, a1, g.tensor(h, f"{w} k1"))
    b1 = g.conv(b.conv1_b, x, g.tensor(h, f"{w} conv1_b"))
    pooled = g.ew([b1], h, identity, f"{w} pool")
    k2 = g.conv(sc.k2, pooled, g.tensor(h, f"{w} k2"))
    k3 = g.conv(sc.k3, b1, g.tensor(h, f"{w} k3"))
    gate = g.ew([k3, b1, k2], h, lambda v: v[0] * torch.sigmoid(v[1] + v[2]), f"{w} gate")
    b2 = g.conv(sc.k4, gate, g.tensor(h, f"{w} k4"))
    for t in (a2, b1, b2):  # one `planes`: every half-width map keeps the same count
        g.tie(g.nodes(a1), g.nodes(t))
    cat = g.cat([(a2, 0, h), (b2, 0, h)], f"{w} cat")
    y = g.conv(b.conv3, cat, g.tensor(b.out_channels, f"{w} conv3"))
    out = residual(b, g, x, y, b.downsample, act_of_sum(b.act))
    g.constrain([g.nodes(a1), g.nodes(out)], lambda hh, o: hh >= 1 and o == 8 * hh,
                f"{w}: out = 4 * planes, half = planes / 2")
    return out, {"half": a1, "out": out}


def _edit_scbottleneck(b: "SCBottleneck", s: Section, n: Count) -> dict:
    """``planes`` = 2 x the kept half."""
    h = n("half")
    return {} if h == b.conv1_a.conv.out_channels else {"planes": str(2 * h)}


@register("scbottleneck")
class SCBottleneck(Block):
    """Half the planes through a plain 3x3 (k1), half through SCConv; concatenated, 1x1 expand."""

    expansion = 4
    prune_rule = Rule(_trace_scbottleneck, _edit_scbottleneck)

    def __init__(self, c_in: int, planes: int, stride: int, pooling_r: int, act: nn.Module,
                 out_stride: float) -> None:
        out = planes * self.expansion
        super().__init__(out, out_stride)
        half = planes // 2
        self.conv1_a = ConvBN(c_in, half, 1, act=act)
        self.k1 = ConvBN(half, half, 3, stride, act=act)
        self.conv1_b = ConvBN(c_in, half, 1, act=act)
        self.scconv = SCConv(half, stride, pooling_r, act)
        self.conv3 = ConvBN(planes, out, 1)
        self.downsample = make_downsample(c_in, out, stride)
        self.act = act

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "SCBottleneck":
        planes = positive(s, "planes")
        if planes % 2:
            raise s.error(f"planes must be even (split into two halves), got {planes}", "planes")
        stride = positive(s, "stride", 1)
        pooling_r = positive(s, "pooling_r", 4)
        size = ctx.map_size_in()
        if size is not None and pooling_r > min(size):
            raise s.error(f"pooling_r={pooling_r} is larger than this block's input map "
                          f"{size[0]}x{size[1]} (the [net] size / stride {ctx.stride_in:g})", "pooling_r")
        act = make_activation(s, "relu")
        return cls(ctx.c_in, planes, stride, pooling_r, act, ctx.stride_in * stride)

    def out_hw(self, in_hw: tuple[int, int], refs: list) -> tuple[int, int]:
        hw = super().out_hw(in_hw, refs)
        if min(hw) < self.scconv.pooling_r:
            raise ConfigError(f"{self.where}: pooling_r={self.scconv.pooling_r} is larger than this block's "
                              f"map {hw[1]}x{hw[0]} (w x h); use a larger input or a smaller pooling_r")
        return hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.k1(self.conv1_a(x))
        b = self.scconv(self.conv1_b(x))
        y = self.conv3(torch.cat((a, b), 1))
        return self.act(y + (self.downsample(x) if self.downsample is not None else x))

    def weight_units(self) -> Iterator[WeightUnit]:
        """conv1_a, k1, conv1_b, k2, k3, k4, conv3, downsample (if present): CB units."""
        yield from self.conv1_a.weight_units()
        yield from self.k1.weight_units()
        yield from self.conv1_b.weight_units()
        yield from self.scconv.weight_units()
        yield from self.conv3.weight_units()
        if self.downsample is not None:
            yield from self.downsample.weight_units()
