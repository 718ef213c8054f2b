"""[res2net] (Bottle2neck) and [triangle] (the same without conv3 and residual)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..cfg import Section
from ..registry import Block, BuildContext, WeightUnit, register
from .layers import ConvBN, make_activation

STYPES = ("normal", "stage")


class _MultiScale(Block):
    """conv1 -> split into ``scale`` chunks -> hierarchical 3x3 convs -> concatenation."""

    def __init__(self, c_in: int, width: int, scale: int, stride: int, stype: str, act: nn.Module,
                 out_channels: int, out_stride: float) -> None:
        super().__init__(out_channels, out_stride)
        self.width, self.scale, self.stype = width, scale, stype
        self.nums = 1 if scale == 1 else scale - 1
        self.conv1 = ConvBN(c_in, width * scale, 1, act=act)
        self.convs = nn.ModuleList(ConvBN(width, width, 3, stride, act=act) for _ in range(self.nums))
        self.pool = nn.AvgPool2d(3, stride, 1) if stype == "stage" and scale > 1 else None

    @staticmethod
    def read_common(s: Section, ctx: BuildContext, base_width: int) -> dict:
        planes = s.int("planes")
        if planes < 1:
            raise s.error(f"expected planes >= 1, got {planes}", "planes")
        inplanes = s.int("inplanes", ctx.c_in)
        if inplanes != ctx.c_in:
            raise s.error(f"inplanes={inplanes} but the input has {ctx.c_in} channels", "inplanes")
        width = planes * s.int("baseWidth", base_width) // 64
        scale = s.int("scale", 4)
        if width < 1 or scale < 1:
            raise s.error(f"needs width = planes * baseWidth // 64 >= 1 and scale >= 1, "
                          f"got width={width}, scale={scale}")
        return dict(planes=planes, width=width, scale=scale, stype=s.choice("stype", STYPES, "normal"),
                    act=make_activation(s, "leaky"))

    def multi_scale(self, x: torch.Tensor) -> torch.Tensor:
        spx = torch.split(self.conv1(x), self.width, 1)
        outs = []
        sp = spx[0]
        for i, conv in enumerate(self.convs):
            if i > 0:
                sp = spx[i] if self.stype == "stage" else sp + spx[i]
            sp = conv(sp)
            outs.append(sp)
        if self.scale > 1:
            outs.append(self.pool(spx[self.nums]) if self.pool is not None else spx[self.nums])
        return torch.cat(outs, 1)

    def weight_units(self) -> Iterator[WeightUnit]:
        yield from self.conv1.weight_units()
        for conv in self.convs:
            yield from conv.weight_units()


@register("res2net")
class Res2Net(_MultiScale):
    """Bottle2neck, expansion 2, linear after the residual sum (``blocks.md``)."""

    def __init__(self, c_in: int, planes: int, width: int, scale: int, stride: int, stype: str,
                 act: nn.Module, out_stride: float) -> None:
        super().__init__(c_in, width, scale, stride, stype, act, planes * 2, out_stride)
        self.conv3 = ConvBN(width * scale, planes * 2, 1)
        need_down = stride != 1 or c_in != planes * 2
        self.downsample = ConvBN(c_in, planes * 2, 1, stride) if need_down else None

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Res2Net":
        args = cls.read_common(s, ctx, 26)
        stride = s.int("stride", 1)
        if stride < 1:
            raise s.error(f"expected stride >= 1, got {stride}", "stride")
        if stride != 1 and args["stype"] != "stage":
            raise s.error("stride != 1 needs stype=stage (the untouched last chunk would not match "
                          "the strided ones)", "stride")
        return cls(ctx.c_in, stride=stride, out_stride=ctx.stride_in * stride, **args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv3(self.multi_scale(x))
        return z + (self.downsample(x) if self.downsample is not None else x)

    def weight_units(self) -> Iterator[WeightUnit]:
        yield from super().weight_units()
        yield from self.conv3.weight_units()
        if self.downsample is not None:
            yield from self.downsample.weight_units()


@register("triangle")
class Triangle(_MultiScale):
    """The multi-scale part of Bottle2neck alone: output = the concatenation."""

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Triangle":
        args = cls.read_common(s, ctx, 16)
        width, scale = args["width"], args["scale"]
        return cls(ctx.c_in, width, scale, 1, args["stype"], args["act"], width * scale, ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multi_scale(x)
