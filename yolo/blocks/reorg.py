"""[reorg] and [reorg3d]: Darknet's two channel/space reshuffles (``reorg_old_layer.c``, ``reorg_layer.c``).

Both move each ``stride x stride`` patch into channels, but in different element orders: ``[reorg3d]``
is a space-to-depth with the patch offset as the major channel index; ``[reorg]`` (YOLOv2's passthrough)
runs the same loop with the input's sizes, which reads the (C, H, W) map as (C/s^2, H*s, W*s) and so
scrambles rows across channels. Pure permutations (bit-exact); no weights.
"""
from __future__ import annotations

import torch

from ..cfg import ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import Block, BuildContext, RefMap, register


def _stride(s: Section, ctx: BuildContext) -> int:
    stride = s.int("stride", 1)
    s.unsupported("reverse", "0")
    if stride < 1:
        raise s.error(f"expected stride >= 1, got {stride}", "stride")
    return stride


@register("reorg3d")
class Reorg3d(Block):
    """``out[(dy*s + dx)*C + c, j, i] = in[c, j*s + dy, i*s + dx]`` (Darknet's REORG layer).

    Pruning is refused: one input channel becomes s*s output channels in separate places."""

    prune_rule = None

    def __init__(self, channels: int, stride: int, in_stride: float) -> None:
        super().__init__(channels * stride * stride, in_stride * stride)
        self.stride = stride

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Reorg3d":
        return cls(ctx.c_in, _stride(s, ctx), ctx.stride_in)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        return in_hw[0] // self.stride, in_hw[1] // self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        b, c, h, w = x.shape
        h, w = h // s, w // s  # Darknet skips the rows/columns past the last whole patch
        x = x[:, :, :h * s, :w * s].reshape(b, c, h, s, w, s)
        return x.permute(0, 3, 5, 1, 2, 4).reshape(b, c * s * s, h, w)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "reorg", "", f"  /{self.stride:2d}", inp, out, 0.0)


@register("reorg")
class Reorg(Reorg3d):
    """Darknet's REORG_OLD: the (C, H, W) input read as (C/s^2, H*s, W*s), then the patch offset of that
    map made the major channel index: ``x.view(C/s^2, H, s, W, s).permute(2, 4, 0, 1, 3)`` (flat), shaped
    (C*s^2, H/s, W/s). Needs C divisible by s^2 and H, W by s (Darknet would write past its buffer)."""

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Reorg":
        stride = _stride(s, ctx)
        if ctx.c_in % (stride * stride):
            raise s.error(f"the input has {ctx.c_in} channels, not divisible by stride*stride = "
                          f"{stride * stride}", "stride")
        return cls(ctx.c_in, stride, ctx.stride_in)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        if in_hw[0] % self.stride or in_hw[1] % self.stride:
            raise ConfigError(f"{self.where}: a {in_hw[1]}x{in_hw[0]} (w x h) map is not divisible by "
                              f"stride={self.stride}")
        return in_hw[0] // self.stride, in_hw[1] // self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        b, c, h, w = x.shape
        x = x.reshape(b, c // (s * s), h, s, w, s).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(b, c * s * s, h // s, w // s)
