"""ACNet: ``asymmetric=1`` on a [convolutional] (Asymmetric Convolution Block) and its fusion.

Training time: three parallel conv+BN branches on one input (k x k, 1 x k, k x 1), summed,
then the activation. Deploy time: the BatchNorms are folded and the 1 x k / k x 1 kernels
are added onto the centre row / column of the k x k kernel, giving one ordinary convolution
with a bias: the same function (the convolution is linear), a plain Darknet layer.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape, conv_row
from ..pruning.rules import Rule, edit_conv, trace_conv
from ..registry import Block, BuildContext, WeightUnit, register
from .conv import Convolutional, ConvSpec
from .layers import ACUnit


@register("convolutional", "conv", variant="asymmetric")
class ACConv(Block):
    """A [convolutional] section with ``asymmetric=1``.

    Pruning: as a [convolutional]; the three branches' outputs are one channel (their BN scales
    rank it together, ``ChannelGraph.conv``).
    """

    prune_rule = Rule(trace_conv, edit_conv)

    def __init__(self, unit: ACUnit, stride: float, stopbackward: int = 0) -> None:
        super().__init__(unit.c_out, stride)
        self.unit = unit
        self.stopbackward = stopbackward  # as a [convolutional]'s (ConvSpec)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "ACConv":
        """The [convolutional] keys (read once in ``ConvSpec``) plus what ACNet requires of them."""
        spec = ConvSpec.from_section(s, ctx)
        size, padding = spec.size, spec.padding
        if size < 3 or size % 2 == 0:
            raise s.error(f"asymmetric=1 needs an odd kernel size >= 3 (1 x k and k x 1 branches "
                          f"centred on a k x k kernel), got size={size}", "asymmetric")
        if not spec.bn:
            raise s.error("asymmetric=1 needs batch_normalize=1 (each branch is conv + BatchNorm)",
                          "asymmetric")
        if padding != size // 2:
            raise s.error(f"asymmetric=1 needs 'same' padding (pad=1 or padding={size // 2}), "
                          f"got padding={padding}", "asymmetric")
        if spec.dilation != 1:
            raise s.error(f"asymmetric=1 does not support dilation, got dilation={spec.dilation}",
                          "asymmetric")
        if spec.xnor or spec.share_index is not None:
            raise s.error("asymmetric=1 does not support xnor=1 or share_index", "asymmetric")
        return cls(ACUnit(ctx.c_in, spec.filters, size, spec.stride, spec.groups, spec.act),
                   ctx.stride_in * spec.stride, spec.stopbackward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x)

    def weight_units(self) -> Iterator[WeightUnit]:
        return self.unit.weight_units()

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """``conv-ac`` (three convolutions summed); ``conv`` once fused into one."""
        return conv_row(index, inp, out, convs)

    def deploy(self) -> tuple[Block, dict[str, str | None]]:
        """One plain [convolutional]: batch_normalize=0, BN folded, branches added."""
        block = Convolutional(self.unit.deployed_unit(keep_bn=False), self.out_stride, self.stopbackward)
        block.where = self.where
        return block, {"asymmetric": None, "batch_normalize": "0"}
