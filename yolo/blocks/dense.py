"""[connected] (``connected_layer.c``) and [local] (``local_layer.c``, YOLOv1's locally connected conv).

Both are sized for the map they get at the [net] size: another input size is refused by ``out_hw``.
``.weights`` layouts differ from a convolution's, so each declares its own tensor order
(:class:`yolo.weights.OrderedUnit`): [connected] biases, weights (outputs x inputs), then, with
batch_normalize, scales, rolling mean, rolling variance; [local] biases (filters x out_h x out_w), then
weights (locations x filters x C*size*size).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..cfg import ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import Block, BuildContext, RefMap, register
from ..weights import OrderedUnit
from .layers import BN_EPS, BN_MOMENTUM, make_activation


def _map_in(s: Section, ctx: BuildContext) -> tuple[int, int]:
    hw = ctx.map_hw_in()
    if hw is None:
        raise s.error("needs the [net] width and height: its size follows the map it is given")
    return hw


@register("connected", "conn")
class Connected(Block):
    """``act(BN(W x) )`` or ``act(W x + b)`` on the flattened (C, H, W) input; output (outputs, 1, 1).

    Pruning is refused: every output mixes every input value."""

    prune_rule = None

    def __init__(self, inputs: int, outputs: int, bn: bool, act: nn.Module, in_chw: tuple[int, int, int],
                 stride: float) -> None:
        super().__init__(outputs, stride)
        self.in_chw = in_chw
        self.linear = nn.Linear(inputs, outputs, bias=not bn)
        self.bn = nn.BatchNorm1d(outputs, eps=BN_EPS, momentum=BN_MOMENTUM) if bn else None
        self.act = act

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Connected":
        outputs = s.int("output", 1)
        if outputs < 1:
            raise s.error(f"expected output >= 1, got {outputs}", "output")
        act = make_activation(s)
        bn = s.bool("batch_normalize", False)
        h, w = _map_in(s, ctx)
        return cls(ctx.c_in * h * w, outputs, bn, act, (ctx.c_in, h, w), ctx.stride_in)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        if tuple(in_hw) != self.in_chw[1:]:
            c, h, w = self.in_chw
            raise ConfigError(f"{self.where}: built for a {w}x{h}x{c} input ({self.linear.in_features} values), "
                              f"got a {in_hw[1]}x{in_hw[0]}x{c} map: use the [net] size")
        return 1, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1))
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y).reshape(x.shape[0], -1, 1, 1)

    def weight_units(self) -> Iterator[OrderedUnit]:
        if self.bn is None:
            yield OrderedUnit((self.linear,), (self.linear.bias, self.linear.weight))
        else:
            bn = self.bn
            yield OrderedUnit((self.linear, bn), (bn.bias, self.linear.weight, bn.weight, bn.running_mean,
                                                  bn.running_var))

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """0 BFLOPs: ``connected_layer.c`` sets no ``l.bflops``, so Darknet's Total BFLOPS leaves it out."""
        return LayerRow(index, "connected", str(self.linear.out_features), "", inp, out, 0.0)


@register("local")
class Local(Block):
    """A convolution with its own kernel and bias at every output position (no sharing).

    Darknet pads by ``pad`` itself (not size/2) and sizes the output as ``(n - 1) / stride + 1`` with pad,
    ``(n - size) / stride + 1`` without; the two agree only when ``size == 2*pad + 1`` or pad=0, so other
    combinations are refused. Pruning is refused."""

    prune_rule = None

    def __init__(self, c_in: int, filters: int, size: int, step: int, pad: int, in_hw: tuple[int, int],
                 act: nn.Module, stride: float) -> None:
        super().__init__(filters, stride)
        self.size, self.step, self.pad, self.in_hw = size, step, pad, in_hw
        oh, ow = ((n + 2 * pad - size) // step + 1 for n in in_hw)
        self.out_size = (oh, ow)
        self.weight = nn.Parameter(torch.empty(oh * ow, filters, c_in * size * size))
        self.bias = nn.Parameter(torch.empty(filters, oh, ow))
        nn.init.normal_(self.weight, 0.0, (c_in * size * size) ** -0.5)
        nn.init.zeros_(self.bias)
        self.act = act

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Local":
        filters = s.int("filters", 1)
        size = s.int("size", 1)
        step = s.int("stride", 1)
        pad = s.int("pad", 0)
        act = make_activation(s)
        if min(filters, size, step) < 1 or pad < 0:
            raise s.error(f"needs filters, size, stride >= 1 and pad >= 0; got {filters}, {size}, {step}, {pad}")
        if pad and size != 2 * pad + 1:
            raise s.error(f"pad={pad} with size={size}: Darknet's output size and padding disagree unless "
                          "size = 2*pad + 1", "pad")
        hw = _map_in(s, ctx)
        if min(hw) + 2 * pad < size:
            raise s.error(f"a {size}x{size} window does not fit the {hw[1]}x{hw[0]} input", "size")
        return cls(ctx.c_in, filters, size, step, pad, hw, act, ctx.stride_in * step)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        if tuple(in_hw) != self.in_hw:
            raise ConfigError(f"{self.where}: built for a {self.in_hw[1]}x{self.in_hw[0]} input, got "
                              f"{in_hw[1]}x{in_hw[0]}: use the [net] size")
        return self.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.step)  # (B, C*k*k, L), Darknet's im2col
        y = torch.einsum("lfk,bkl->bfl", self.weight, cols).reshape(x.shape[0], -1, *self.out_size)
        return self.act(y + self.bias)

    def weight_units(self) -> Iterator[OrderedUnit]:
        yield OrderedUnit((self,), (self.bias, self.weight))

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """0 BFLOPs: ``local_layer.c`` sets no ``l.bflops``, so Darknet's Total BFLOPS leaves it out."""
        k = self.size
        return LayerRow(index, "local", str(self.out_channels), f"{k:2d} x{k:2d}/{self.step:2d}", inp, out, 0.0)
