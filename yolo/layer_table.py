"""One row of Darknet's layer table (``LayerRow``) and the convolution figures rows are made of.

Each block class says its own row (``Block.info_row``); ``yolo.info`` runs the shapes and prints.
This module imports no block, so blocks and ``yolo.info`` both import it without a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

Shape = tuple[int, int, int]  # (W, H, C), as Darknet prints it
ConvFigures = list[tuple[nn.Conv2d, float]]  # the convolutions a section ran, each with its BFLOPs


@dataclass
class LayerRow:
    """One line of the table. Shapes are (W, H, C), as Darknet prints them."""

    index: int
    type: str  # Darknet's short name: conv, max, route, shortcut, upsample, dropout, yolo, ...
    filters: str  # the filters column: "16", "32/ 32" (groups), route's layer list
    size: str  # the size/stride(dilation) column: " 3 x 3/ 1", "2x 2/ 2", " 2x"
    input: Shape | None
    output: Shape
    bflops: float
    params: int = 0  # trainable parameters of this section
    convs: list[tuple[str, float]] = field(default_factory=list)  # (description, BFLOPs) inside

    @property
    def text(self) -> str:
        shape_in = _shape(self.input) if self.input is not None else " " * 19
        return (f"{self.index:4d} {self.type:<12s} {self.filters:>10s} {self.size:<15s} "
                f"{shape_in} -> {_shape(self.output)} {self.bflops:6.3f} BF")


def _shape(s: Shape) -> str:
    return f"{s[0]:4d} x{s[1]:4d} x{s[2]:4d}"


def conv_bflops(conv: nn.Conv2d, out_h: int, out_w: int) -> float:
    """Darknet's ``l.bflops`` of a convolution: 2 * weights * output positions / 1e9."""
    kh, kw = conv.kernel_size
    weights = conv.in_channels // conv.groups * conv.out_channels * kh * kw
    return 2.0 * weights * out_h * out_w / 1e9


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_text(conv: nn.Conv2d) -> tuple[str, str]:
    """(filters column, size column) of a convolution, in Darknet's formats."""
    n, g = conv.out_channels, conv.groups
    filters = f"{n:d}/{g:4d}" if g > 1 else f"{n:d}"
    (kh, kw), (sy, sx), (dy, _) = conv.kernel_size, _pair(conv.stride), _pair(conv.dilation)
    size = f"{kh:2d} x{kw:2d}/{sx:2d}" if sy == sx else f"{kh:2d} x{kw:2d}/{sx:2d}x{sy:2d}"
    if dy > 1:
        size += f"({dy:d})"
    return filters, size


def composite_row(index: int, kind: str, inp: Shape | None, out: Shape, convs: ConvFigures) -> LayerRow:
    """A section Darknet does not have: its output channels, its stride, the sum of its convolutions
    by the convolution rule (pools, sums and gates inside are not counted)."""
    stride = inp[0] // out[0] if inp and out[0] and inp[0] >= out[0] else 1
    return LayerRow(index, kind, str(out[2]), f"  /{stride:2d}", inp, out, sum(b for _, b in convs))


def conv_row(index: int, inp: Shape | None, out: Shape, convs: ConvFigures) -> LayerRow:
    """A [convolutional]: ``2 * (C_in / groups) * filters * kh * kw * out_h * out_w / 1e9``
    (``convolutional_layer.c``); ``conv-ac`` for ACNet's three summed branches."""
    filters, size = conv_text(convs[0][0])
    name = "conv" if len(convs) == 1 else "conv-ac"  # ACNet: square + 1xk + kx1 summed
    return LayerRow(index, name, filters, size, inp, out, sum(b for _, b in convs))
