"""[contrastive] (``contrastive_layer.c``): a training-only loss on a [yolo]'s embeddings.

At inference Darknet's forward returns at once and the layer's output stays zeros (shape of its
input); so does ours. Its keys only shape the training loss, which this port does not train.
"""
from __future__ import annotations

import torch

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..registry import Block, BuildContext, register


@register("contrastive")
class Contrastive(Block):
    """Zeros shaped as the input. Pruning is refused (its input is a [yolo]'s embedding layout)."""

    prune_rule = None

    def __init__(self, channels: int, yolo_layer: int, settings: dict[str, float], stride: float) -> None:
        super().__init__(channels, stride)
        self.yolo_layer = yolo_layer
        self.settings = settings  # the loss's keys, kept for a trainer that implements it

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Contrastive":
        yolo_layer = ctx.layer_index(s, s.int("yolo_layer"), "yolo_layer")
        settings = {"classes": s.int("classes", 1000), "temperature": s.float("temperature", 1.0),
                    "cls_normalizer": s.float("cls_normalizer", 1.0),
                    "max_delta": s.float("max_delta", float("inf")),
                    "contrastive_neg_max": s.int("contrastive_neg_max", 3)}
        return cls(ctx.c_in, yolo_layer, settings, ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "contrastive", str(self.yolo_layer), "", inp, out, 0.0)
