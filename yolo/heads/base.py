"""The head seam: what every detection-head section owns, asked for by loss, trainer, export and engines.

A head is a :class:`~yolo.registry.Block` whose output is collected rather than passed on
(``is_output``). Besides being built from its section (its settings and their Darknet defaults
read there, once), it answers everything the code above the model needs to know about it:

* ``decode`` / ``forward``: the eval contract (cx, cy, w, h in input pixels, objectness, classes);
* ``make_loss``: its targets and loss, built once for all heads of its type (Darknet's [yolo]
  assignment looks across every [yolo] layer), returning summed (box, obj, cls) terms;
* ``nms_settings``: the keyword arguments of :func:`yolo.darknet_map.darknet_nms` it asks for,
  which :class:`~yolo.backends.ModelInfo` and the ONNX metadata carry;
* ``jitter`` (augmentation), ``multiscale``, ``training_problem``, ``init_bias`` and
  ``settings_row`` (the trainer), ``clear_cache`` (export);
* as every block: ``prune_rule`` (a head's input channels are fixed) and ``info_row``.

So a new head type is one module in :mod:`yolo.heads` plus its ``@register``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..cfg import Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..pruning.rules import FIXED_INPUT
from ..registry import Block


class HeadLoss:
    """The loss of every head of one type in a model, built by that type's ``make_loss``.

    Called with those heads' training-mode outputs (in model order), the targets
    (``Tensor[N, 6]``: image, class, cx, cy, w, h normalised to the input, float32 on the outputs'
    device) and the input (height, width); returns the summed (box, obj, cls) losses of the batch,
    not yet divided by the batch size (the model-level :class:`yolo.loss.YOLOLoss` does that).
    """

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class Head(Block):
    """Base of every detection-head section (``[yolo]`` today)."""

    is_output = True
    num_classes: int = 0
    prune_rule = FIXED_INPUT  # the head's layout (anchors x (5 + classes)) is not ours to change

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """Its section type, its map in and out, 0 BFLOPs (as Darknet prints a [yolo])."""
        return LayerRow(index, section.type, "", "", inp, out, 0.0)

    @classmethod
    def make_loss(cls, heads: Sequence["Head"]) -> HeadLoss:
        """The loss of ``heads`` (every head of this type in the model, in model order)."""
        raise ValueError(f"{heads[0].where}: [{cls.section_type}] has no training loss")

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        """This head's raw training output -> the eval contract's rows (see the model docstring)."""
        raise NotImplementedError

    def nms_settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`yolo.darknet_map.darknet_nms` (``nms_kind``, ``beta_nms``);
        none: Darknet's plain per-class IoU NMS."""
        return {}

    @property
    def jitter(self) -> float:
        """The crop jitter augmentation asks for (Darknet reads it from the head section)."""
        return 0.0

    @property
    def multiscale(self) -> bool:
        """Whether the section asks for multi-scale training (Darknet's ``random``)."""
        return False

    def training_problem(self) -> str | None:
        """Why the trainer cannot train this head as configured (None: it can)."""
        return None

    @torch.no_grad()
    def init_bias(self, bias: torch.Tensor, input_hw: tuple[int, int], num_heads: int,
                  objects_per_image: float) -> None:
        """Set the bias of the convolution feeding this head to its from-scratch priors
        (``num_heads`` heads share ``objects_per_image``); default: leave it as it is."""

    def settings_row(self) -> tuple[str, str, str] | None:
        """(name, value, source) of this head's training settings in the trainer's settings table."""
        return None

    def clear_cache(self) -> None:
        """Forget anything cached per input size (a traced export must not bake it in)."""
