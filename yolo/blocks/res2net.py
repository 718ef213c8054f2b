"""[res2net] (Bottle2neck) and [triangle] (the same without conv3 and residual).

Pruning couples the ``scale`` chunks of conv1 and the outputs of the 3x3 convs, by index within a
chunk (widths stay equal); [res2net] also its output with its residual. Its keys: ``planes`` =
out / 2 (out stays even) and a ``baseWidth`` with ``planes * baseWidth // 64`` = the kept width; a
1x1 projection stays (input != output) when it was there.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..cfg import Section
from ..pruning.graph import ChannelGraph
from ..pruning.rules import Count, Named, Rule, add, identity, residual
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


def _trace_multiscale(b: _MultiScale, g: ChannelGraph, x: int) -> tuple[int, Named]:
    w, s = b.width, b.scale
    t1 = g.conv(b.conv1, x, g.tensor(w * s, f"{b.where} conv1"))
    chunks = [g.cat([(t1, k * w, (k + 1) * w)], f"{b.where} chunk {k}") for k in range(s)]
    for k in range(1, s):  # widths stay equal: channel j of every chunk is one decision
        g.tie(g.nodes(chunks[0]), g.nodes(chunks[k]))
    outs, sp = [], chunks[0]
    for i, conv in enumerate(b.convs):
        if i > 0:
            sp = chunks[i] if b.stype == "stage" else g.ew([sp, chunks[i]], w, add, f"{b.where} sum {i}")
        sp = g.conv(conv, sp, g.tensor(w, f"{b.where} convs[{i}]"))
        g.tie(g.nodes(sp), g.nodes(chunks[0]))
        outs.append(sp)
    if s > 1:
        last = chunks[b.nums]
        if b.pool is not None:
            last = g.ew([last], w, identity, f"{b.where} pool")  # constant only away from the border
        outs.append(last)
    cat = g.cat([(t, 0, w) for t in outs], f"{b.where} cat")
    return cat, {"width": chunks[0], "in": x}


def _width_ok(planes: int, width: int) -> int | None:
    """A baseWidth with planes * baseWidth // 64 == width, or None."""
    if planes < 1 or width < 1:
        return None
    bw = -(-64 * width // planes)
    return bw if planes * bw // 64 == width else None


def _inplanes(s: Section, n: Count) -> dict:
    return {"inplanes": str(n("in"))} if "inplanes" in s else {}


def _trace_res2net(b: "Res2Net", g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    cat, named = _trace_multiscale(b, g, x)
    y = g.conv(b.conv3, cat, g.tensor(b.out_channels, f"{b.where} conv3"))
    out = residual(b, g, x, y, b.downsample, add)
    g.constrain([g.nodes(named["width"]), g.nodes(out)],
                lambda w, o: o % 2 == 0 and _width_ok(o // 2, w) is not None,
                f"{b.where}: planes = out / 2 and width = planes * baseWidth // 64")
    return out, {**named, "out": out}


def _edit_res2net(b: "Res2Net", s: Section, n: Count) -> dict:
    planes, width = n("out") // 2, n("width")
    edits = _inplanes(s, n)
    if planes != b.out_channels // 2 or width != b.width:
        old_bw = s.int("baseWidth", 26)
        edits["planes"] = str(planes)
        edits["baseWidth"] = str(old_bw if planes * old_bw // 64 == width else _width_ok(planes, width))
    return edits


@register("res2net")
class Res2Net(_MultiScale):
    """Bottle2neck, expansion 2, linear after the residual sum (``blocks.md``)."""

    prune_rule = Rule(_trace_res2net, _edit_res2net)

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


def _trace_triangle(b: "Triangle", g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    return _trace_multiscale(b, g, x)


def _edit_triangle(b: "Triangle", s: Section, n: Count) -> dict:
    edits = _inplanes(s, n)
    if n("width") != b.width:
        edits["planes"], edits["baseWidth"] = str(n("width")), "64"
    return edits


@register("triangle")
class Triangle(_MultiScale):
    """The multi-scale part of Bottle2neck alone: output = the concatenation."""

    prune_rule = Rule(_trace_triangle, _edit_triangle)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Triangle":
        args = cls.read_common(s, ctx, 16)
        width, scale = args["width"], args["scale"]
        return cls(ctx.c_in, width, scale, 1, args["stype"], args["act"], width * scale, ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multi_scale(x)
