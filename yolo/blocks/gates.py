"""[sam] and [scale_channels]: an earlier map multiplied by the previous layer (attention gates).

``[sam]`` (``sam_layer.c``): ``act(prev * from)`` elementwise, same shapes. ``[scale_channels]``
(``scale_channels_layer.c``): ``act(from * prev)`` with ``prev`` one value per channel (C x 1 x 1, an SE
block), or with ``scale_wh=1`` one value per pixel (1 x H x W). Both output the ``from`` layer's shape;
their activation defaults to linear.
"""
from __future__ import annotations

import torch
from torch import nn

from ..cfg import ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..pruning.graph import ChannelGraph
from ..pruning.rules import Named, Rule, no_edits
from ..registry import Block, BuildContext, RefMap, register
from .conv import keep_activation
from .layers import make_activation


def _wxh(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def _trace_product(block: "Sam", g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """Channel c out = act(prev[c] * from[c]): the two inputs keep the same channels."""
    act = block.act

    def fn(v: list[torch.Tensor]) -> torch.Tensor:
        return act((v[0] * v[1]).view(1, -1, 1, 1)).view(-1)

    return g.ew([x, outs[block.inputs[0]]], block.out_channels, fn, block.where), {}


class _Gate(Block):
    """Shared build: the ``from`` layer, the activation (linear by default)."""

    prune_rule = Rule(_trace_product, no_edits)

    def __init__(self, source: int, channels: int, act: nn.Module, stride: float) -> None:
        super().__init__(channels, stride)
        self.inputs = (source,)
        self.act = act

    @classmethod
    def _parts(cls, s: Section, ctx: BuildContext) -> tuple[int, nn.Module]:
        source = ctx.layer_index(s, s.int("from"), "from")
        return source, make_activation(s, "linear")

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(x * refs[0])

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """The ``from`` layer in the filters column; 0 BFLOPs (``sam_layer.c`` and ``scale_channels_layer.c``
        set no ``l.bflops``: Darknet's Total BFLOPS leaves them out)."""
        return LayerRow(index, self.section_type, str(self.inputs[0]), "", inp, out, 0.0)


@register("sam")
class Sam(_Gate):
    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Sam":
        source, act = cls._parts(s, ctx)
        if ctx.channels[source] != ctx.c_in:
            raise s.error(f"layer {source} has {ctx.channels[source]} channels, the previous layer "
                          f"{ctx.c_in}: [sam] multiplies maps of the same shape", "from")
        return cls(source, ctx.c_in, act, ctx.strides[source])

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        if refs[0].hw != in_hw:
            raise ConfigError(f"{self.where}: cannot multiply layer {refs[0].index} ({refs[0].where}, "
                              f"{_wxh(refs[0].hw)}) by this section's input ({_wxh(in_hw)}): sizes differ")
        return in_hw


@register("scale_channels")
class ScaleChannels(_Gate):
    def __init__(self, source: int, channels: int, act: nn.Module, stride: float, scale_wh: bool) -> None:
        super().__init__(source, channels, act, stride)
        self.scale_wh = scale_wh
        if scale_wh:
            self.prune_rule = None  # one map scales every channel: pruning is refused

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "ScaleChannels":
        source, act = cls._parts(s, ctx)
        scale_wh = s.bool("scale_wh", False)
        if scale_wh and ctx.c_in != 1:
            raise s.error(f"scale_wh=1 needs a 1-channel previous layer, it has {ctx.c_in}", "scale_wh")
        if not scale_wh and ctx.c_in != ctx.channels[source]:
            raise s.error(f"the previous layer has {ctx.c_in} channels, layer {source} "
                          f"{ctx.channels[source]}: one scale per channel needs the same count", "from")
        for i in (len(ctx.channels) - 1, source):
            keep_activation(ctx, i)  # Darknet: the previous and the from layer lose bin_output
        return cls(source, ctx.channels[source], act, ctx.strides[source], scale_wh)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        ref = refs[0]
        if (in_hw != ref.hw) if self.scale_wh else (in_hw != (1, 1)):
            need = _wxh(ref.hw) if self.scale_wh else "1x1"
            raise ConfigError(f"{self.where}: the previous layer's map is {_wxh(in_hw)}, [scale_channels] needs "
                              f"{need} to scale layer {ref.index} ({ref.where}, {_wxh(ref.hw)})")
        return ref.hw

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(refs[0] * x)
