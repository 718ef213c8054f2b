"""A classifier's last sections: [softmax] (``softmax_layer.c``) and [cost] (``cost_layer.c``)."""
from __future__ import annotations

import torch

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..pruning.rules import PASS_THROUGH
from ..registry import Block, BuildContext, register

COST_TYPES = ("sse", "masked", "smooth", "L1", "seg", "wgan")  # Darknet's get_cost_type names


@register("softmax", "soft")
class Softmax(Block):
    """``softmax(x / temperature)`` over the flattened (C, H, W) input cut into ``groups`` equal runs, as
    Darknet's ``softmax_cpu`` reads its input; the output keeps the input's shape. Pruning is refused
    (every value is normalised by all the others in its group)."""

    prune_rule = None

    def __init__(self, channels: int, groups: int, temperature: float, stride: float) -> None:
        super().__init__(channels, stride)
        self.groups, self.temperature = groups, temperature

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Softmax":
        groups = s.int("groups", 1)
        temperature = s.float("temperature", 1.0)
        s.unsupported("tree", "")
        s.unsupported("spatial", "0")
        if groups < 1:
            raise s.error(f"expected groups >= 1, got {groups}", "groups")
        if temperature <= 0:
            raise s.error(f"expected temperature > 0, got {temperature}", "temperature")
        return cls(ctx.c_in, groups, temperature, ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x[0].numel()
        if n % self.groups:
            raise ValueError(f"{self.where}: {n} inputs are not divisible by groups={self.groups}")
        flat = x.reshape(x.shape[0], self.groups, n // self.groups)
        return torch.softmax(flat / self.temperature, -1).reshape(x.shape)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "softmax", "", "", inp, out, 0.0)


@register("cost")
class Cost(Block):
    """The training loss of a classifier. At inference the network's output skips it (Darknet's
    ``get_network_output`` returns the last layer that is not a [cost]), so it passes its input on."""

    prune_rule = PASS_THROUGH

    def __init__(self, channels: int, kind: str, stride: float) -> None:
        super().__init__(channels, stride)
        self.kind = kind

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Cost":
        return cls(ctx.c_in, s.choice("type", COST_TYPES, "sse"), ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "cost", self.kind, "", inp, out, 0.0)
