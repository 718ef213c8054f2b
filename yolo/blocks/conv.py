"""[convolutional]: its keys (``ConvSpec``, shared with ACNet's variant), the plain block, Darknet's XNOR
convolution (``xnor=1``) and the weight-sharing form (``share_index=N``).

What Darknet does with these keys (``parse_convolutional`` and ``make_convolutional_layer`` in
``convolutional_layer.c``, ``fuse_conv_batchnorm`` and ``calculate_binary_weights`` in ``network.c``):

* ``pad=1`` sets ``padding = size / 2`` even when ``padding=`` is given (pad wins);
* ``xnor=1``: the layer looks at signs only, see :class:`XnorConvBN`; ``bin_output=1`` turns its activation
  linear at inference; groups are ignored (``groups = 1``). The file keeps real-valued weights;
* ``share_index=N`` (absolute, or relative when negative): the layer runs with layer N's kernel, biases and
  BatchNorm and owns nothing, so ``.weights`` holds nothing for it, see :class:`SharedConvolutional`;
* ``stopbackward``: read and kept on the block (``stopbackward``); the trainer decides what it does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape, conv_bflops, conv_row
from ..pruning.graph import ChannelGraph
from ..pruning.rules import Named, Rule, edit_conv, no_edits, trace_conv
from ..registry import Block, BuildContext, RefMap, WeightUnit, register
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
    xnor: bool = False
    bin_output: bool = False
    share_index: Optional[int] = None  # absolute index of the layer whose tensors this one runs with
    stopbackward: int = 0  # Darknet: 1 stops backward here (and before); N > 1 until iteration N (GPU)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "ConvSpec":
        filters = s.int("filters", 1)
        size = s.int("size", 1)
        stride = s.int("stride", 1)
        pad = s.bool("pad", False)
        padding = s.int("padding", 0)
        if pad:
            padding = size // 2  # Darknet's parse_convolutional: pad=1 wins over an explicit padding=
        groups = s.int("groups", 1)
        dilation = s.int("dilation", 1)
        bn = s.bool("batch_normalize", False)
        act = make_activation(s)
        xnor = s.bool("xnor", False)
        bin_output = s.bool("bin_output", False)  # read as Darknet reads it; it only acts with xnor=1
        share = s.int("share_index", None)
        stopbackward = s.int("stopbackward", 0)
        s.unsupported("stride_x", str(stride))
        s.unsupported("stride_y", str(stride))
        for key in ("binary", "antialiasing", "deform"):
            s.unsupported(key, "0")
        if min(filters, size, stride, groups, dilation) < 1:
            raise s.error("filters, size, stride, groups and dilation must be >= 1")
        if padding < 0:
            raise s.error(f"padding must be >= 0, got {padding}", "padding")
        if stopbackward < 0:
            raise s.error(f"stopbackward must be >= 0, got {stopbackward}", "stopbackward")
        if share is not None and xnor:
            raise s.error("share_index with xnor=1 is not supported", "share_index")
        if xnor:
            groups = 1  # as Darknet's make_convolutional_layer: "disable groups for XNOR-net"
            if dilation > 1 and size > 1:
                raise s.error(f"xnor=1 with dilation={dilation} is not supported (Darknet's CPU XNOR path "
                              "ignores dilation, its GPU path does not)", "xnor")
        if ctx.c_in % groups or filters % groups:
            raise s.error(f"groups={groups} must divide the input channels ({ctx.c_in}) "
                          f"and filters ({filters})", "groups")
        if size == 1:
            dilation = 1  # as Darknet
        share_index = None if share is None else ctx.layer_index(s, share, "share_index")
        return cls(filters, size, stride, padding, groups, dilation, bn, act, xnor, bin_output, share_index,
                   stopbackward)


def _refused(reason: str) -> Rule:
    """A prune rule that refuses the block, naming its section and saying why."""

    def trace(block: Any, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
        raise ValueError(f"{block.where}: {reason}")

    return Rule(trace, no_edits)


XNOR_NOT_PRUNABLE = _refused("an xnor=1 convolution cannot be pruned (its output is read by sign only and its "
                             "scale is the mean |weight| of each filter: a removed channel cannot be folded into "
                             "its readers)")
SHARED_NOT_PRUNABLE = _refused("a share_index convolution cannot be pruned (it runs with another layer's "
                               "weights: both would have to lose the same channels)")


def _signs(t: torch.Tensor) -> torch.Tensor:
    """+1 where ``t`` > 0, else -1 (0 -> -1), as Darknet's ``binarize_cpu`` / ``float_to_bit``."""
    return (t > 0).to(t.dtype) * 2 - 1


class XnorConvBN(ConvBN):
    """Darknet's ``xnor=1`` convolution as its CPU inference computes it (``detector test``: the BatchNorm
    fused into the kernel, then ``calculate_binary_weights``): per filter f,

        out_f = mean(|w_f|) * sum(sign(w_f) * sign(x)) + b_f,   sign(v) = +1 if v > 0 else -1,

    with the zero padding counted as -1 (a 0 bit in Darknet's bit GEMM) and the inputs not scaled. Unfused
    (kernel, then BatchNorm) this is the same function, since BN(alpha * s) = (alpha * gamma / std) * s + ...;
    ``fuse_bn`` (inherited) folds the BN first, as Darknet does. The ±1 products sum to exact integers.

    ``bin_output=1``: at inference the activation is linear (``calculate_binary_weights``); training keeps the
    cfg's activation, as Darknet's training never calls it.

    Training (a straight-through estimator, as Darknet's GPU training): the gradient that reaches the real
    kernel is the gradient of the binary kernel ``mean|w_f| * sign(w_f)`` (the scale taken as a constant), and
    the input's gradient passes where |x| < 1 (Darknet's ``HARDTAN`` gradient). Unlike Darknet's GPU forward,
    training computes what inference computes (padding -1, 0 -> -1).
    """

    def __init__(self, c_in: int, c_out: int, size: int, stride: int, padding: int, bn: bool, act: nn.Module,
                 bin_output: bool) -> None:
        super().__init__(c_in, c_out, size, stride, 0, 1, 1, bn, act)
        self.pad = padding  # applied as -1 around the signs, not by the convolution
        self.bin_output = bin_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        scale = w.detach().abs().mean((1, 2, 3))
        sx, sw = _signs(x), _signs(w)
        if torch.is_grad_enabled():  # straight through, adding exact zeros to the forward values
            sx = sx + (x - x.detach()) * (x.detach().abs() < 1).to(x.dtype)  # HARDTAN's gradient: 1 on (-1, 1)
            ws = w / scale.clamp_min(torch.finfo(w.dtype).tiny).view(-1, 1, 1, 1)
            sw = sw + (ws - ws.detach())
        if self.pad:
            sx = F.pad(sx, (self.pad,) * 4, value=-1.0)
        y = F.conv2d(sx, sw.to(sx.dtype), None, self.conv.stride) * scale.to(sx.dtype).view(1, -1, 1, 1)
        if self.bn is not None:
            y = self.bn(y)
        else:
            y = y + self.conv.bias.to(y.dtype).view(1, -1, 1, 1)
        if self.bin_output and not self.training:
            return y
        return self.act(y)


def keep_activation(ctx: BuildContext, index: int) -> None:
    """Darknet's parser: a layer that a [route], [shortcut] or [scale_channels] reads keeps its activation at
    inference (``use_bin_output = 0``): those read its values, not only their signs. Called by those blocks
    for each layer they read, as Darknet's parse_network_cfg does."""
    if len(ctx.blocks) == len(ctx.channels) and 0 <= index < len(ctx.blocks):
        unit = getattr(ctx.blocks[index], "unit", None)
        if isinstance(unit, XnorConvBN):
            unit.bin_output = False


@register("convolutional", "conv")
class Convolutional(Block):
    """A Darknet [convolutional] section (plain, or ``xnor=1`` with an :class:`XnorConvBN` unit).

    Pruning: nothing coupled across input and output, except a depthwise conv (groups = in = out:
    channel c in with channel c out; ``groups`` follows ``filters``); other grouped convs and convs
    without BatchNorm keep all their channels. An ``xnor=1`` conv refuses pruning.
    """

    prune_rule = Rule(trace_conv, edit_conv)

    def __init__(self, unit: ConvBN, stride: float, stopbackward: int = 0) -> None:
        super().__init__(unit.conv.out_channels, stride)
        self.unit = unit
        self.stopbackward = stopbackward
        if isinstance(unit, XnorConvBN):
            self.prune_rule = XNOR_NOT_PRUNABLE

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Block":
        spec = ConvSpec.from_section(s, ctx)
        if spec.share_index is not None:
            return SharedConvolutional.from_spec(s, spec, ctx)
        if spec.xnor:
            unit: ConvBN = XnorConvBN(ctx.c_in, spec.filters, spec.size, spec.stride, spec.padding, spec.bn,
                                      spec.act, spec.bin_output)
        else:
            unit = ConvBN(ctx.c_in, spec.filters, spec.size, spec.stride, spec.padding * spec.dilation,
                          spec.groups, spec.dilation, spec.bn, spec.act)
        return cls(unit, ctx.stride_in * spec.stride, spec.stopbackward)

    def out_hw(self, in_hw: tuple[int, int], refs: list) -> tuple[int, int]:
        if isinstance(self.unit, XnorConvBN):
            k, s, p = self.unit.conv.kernel_size[0], self.unit.conv.stride[0], self.unit.pad
            return tuple((n + 2 * p - k) // s + 1 for n in in_hw)  # type: ignore[return-value]
        return conv_out_hw(self.unit.conv, in_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x)

    def weight_units(self) -> Iterator[WeightUnit]:
        return self.unit.weight_units()

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """``conv``; an xnor conv is ``convX`` (``convXB`` with bin_output=1) with Darknet's BFLOPs / 32."""
        if not isinstance(self.unit, XnorConvBN):
            return conv_row(index, inp, out, convs)
        conv = self.unit.conv  # the xnor forward calls F.conv2d: no module hook saw it
        row = conv_row(index, inp, out, [(conv, conv_bflops(conv, out[1], out[0]) / 32)])
        row.type = "convXB" if self.unit.bin_output else "convX"
        return row


class SharedConvolutional(Block):
    """[convolutional] share_index=N: layer N's kernel, biases and BatchNorm (the same tensors: trained once,
    its BN statistics updated by both), with this section's own stride, padding, dilation and activation.

    It owns no tensors: ``weight_units()`` is empty (Darknet's load_weights and save_weights skip a share
    layer), ``parameters()`` is empty, and fusing layer N fuses it too (Darknet's fuse_conv_batchnorm folds
    the source and drops the sharer's BN flag). The source is held outside the module tree for that reason.
    Pruning is refused.
    """

    section_type = "convolutional"  # built by Convolutional.from_section, not registered itself
    prune_rule = SHARED_NOT_PRUNABLE

    def __init__(self, source: Convolutional, share_index: int, stride: int, padding: int, dilation: int,
                 act: nn.Module, out_stride: float, stopbackward: int = 0) -> None:
        super().__init__(source.out_channels, out_stride)
        self._source = (source,)  # a tuple: not a submodule (deepcopy keeps it pointing at the copied source)
        self.share_index = share_index
        self.step, self.padding, self.dilation = stride, padding * dilation, dilation
        self.act = act
        self.stopbackward = stopbackward

    @property
    def source(self) -> Convolutional:
        return self._source[0]

    @classmethod
    def from_spec(cls, s: Section, spec: ConvSpec, ctx: BuildContext) -> "SharedConvolutional":
        index = spec.share_index
        assert index is not None
        if len(ctx.blocks) != len(ctx.channels):
            raise s.error("share_index needs the blocks built before this section", "share_index")
        source = ctx.blocks[index]
        if isinstance(source, SharedConvolutional):
            source = source.source  # Darknet's pointers lead to the layer that owns the tensors
        if type(source) is not Convolutional or type(source.unit) is not ConvBN:
            raise s.error(f"share_index={index} refers to {source.where}, not a plain [convolutional] "
                          "(no xnor=1, no asymmetric=1)", "share_index")
        conv = source.unit.conv
        mine = (ctx.c_in, spec.filters, spec.size, spec.groups, spec.bn)
        theirs = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.groups, source.unit.bn is not None)
        if mine != theirs:
            names = ("input channels", "filters", "size", "groups", "batch_normalize")
            diff = ", ".join(f"{n} {a} vs {b}" for n, a, b in zip(names, mine, theirs) if a != b)
            raise s.error(f"share_index={index}: this layer and {source.where} must agree on input channels, "
                          f"filters, size, groups and batch_normalize ({diff})", "share_index")
        return cls(source, index, spec.stride, spec.padding, spec.dilation, spec.act, ctx.stride_in * spec.stride,
                   spec.stopbackward)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        k = self.source.unit.conv.kernel_size[0]
        return tuple((n + 2 * self.padding - self.dilation * (k - 1) - 1) // self.step + 1  # type: ignore
                     for n in in_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = self.source.unit
        conv = unit.conv
        y = F.conv2d(x, conv.weight, conv.bias, self.step, self.padding, self.dilation, conv.groups)
        if unit.bn is not None:
            y = unit.bn(y)
        return self.act(y)

    def geometry(self) -> nn.Conv2d:
        """This layer's convolution as a (meta, weightless) module, for its layer-table row."""
        conv = self.source.unit.conv
        return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, self.step, self.padding,
                         self.dilation, conv.groups, bias=False, device="meta")

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """``convS``, with the BFLOPs Darknet counts for it (a convolution it runs, weights shared or not)."""
        geom = self.geometry()
        row = conv_row(index, inp, out, [(geom, conv_bflops(geom, out[1], out[0]))])
        row.type = "convS"
        return row
