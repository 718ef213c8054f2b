"""[crop] (``crop_layer.c``): at inference, the centred crop_height x crop_width window, mapped
from [0, 1] to [-1, 1] (``x * 2 - 1``) unless ``noadjust=1``.

Its other keys (flip, angle, saturation, exposure, shift) are Darknet's training-time augmentation
and do nothing at inference (its CPU forward only flips, and only when training).
"""
from __future__ import annotations

import torch

from ..cfg import ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import Block, BuildContext, RefMap, register


@register("crop")
class Crop(Block):
    """Pruning is refused (it sits on the image, whose 3 channels are not ours to remove)."""

    prune_rule = None

    def __init__(self, channels: int, hw: tuple[int, int], adjust: bool, stride: float) -> None:
        super().__init__(channels, stride)
        self.hw, self.adjust = hw, adjust

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Crop":
        h, w = s.int("crop_height", 1), s.int("crop_width", 1)
        if min(h, w) < 1:
            raise s.error(f"expected crop_height, crop_width >= 1, got {h}, {w}")
        for key, default in (("flip", False), ("noadjust", False)):
            s.bool(key, default)
        for key, default in (("angle", 0.0), ("saturation", 1.0), ("exposure", 1.0), ("shift", 0.0)):
            s.float(key, default)
        return cls(ctx.c_in, (h, w), not s.bool("noadjust", False), ctx.stride_in)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        if in_hw[0] < self.hw[0] or in_hw[1] < self.hw[1]:
            raise ConfigError(f"{self.where}: cannot crop {self.hw[1]}x{self.hw[0]} (w x h) from a "
                              f"{in_hw[1]}x{in_hw[0]} map")
        return self.hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]  # not int(): a traced (dynamic ONNX) graph keeps the centring
        top, left = (h - self.hw[0]) // 2, (w - self.hw[1]) // 2
        x = x[:, :, top:top + self.hw[0], left:left + self.hw[1]]
        return x * 2 - 1 if self.adjust else x.clone()

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "crop", "", "", inp, out, 0.0)
