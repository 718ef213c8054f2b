"""Darknet's recurrent layers: [crnn] (``crnn_layer.c``), run here, and the text models' rule.

[crnn] is a convolutional RNN on an image map. Per forward (one video frame)::

    state = act(BN(conv_in(x))) + act(BN(conv_self(state_prev)))   (+ state_prev with shortcut=1)
    out   = act(BN(conv_out(state)))

``state_prev`` is zeros before the first frame. Darknet keeps ``state`` from one ``network_predict``
to the next and never clears it at inference; here the caller says when a source starts
(``Darknet.reset_state``), because one model serves many sources:

* ``reset_state(carry=True)``: the state is cleared and each later forward continues the one before
  (the frames of one video or camera). Batch rows are separate streams (row i continues row i, as
  Darknet's state is per batch row), so a stream must keep its batch size and map size; a forward
  that does not is refused, naming the section.
* ``reset_state(carry=False)``, the default of a new model: every forward starts from a zero state
  (independent images: evaluation, a folder of photos, a batch of unrelated pictures never leak
  into one another).

The inner BatchNorms fold like any other (Darknet leaves them unfused; the results agree within
float32 rounding). Training is refused (Darknet trains a [crnn] on sequences of ``time_steps``
consecutive frames, ``[net] track=1``; this port's loaders give independent images). A traced graph
(ONNX export, TorchScript) cannot carry the state, so tracing is refused; so is pruning.

The text models of Darknet's cfg folder (``rnn.cfg``, ``gru.cfg``, ``lstm.train.cfg``,
``crnn.train.cfg`` ...) read characters, not images: :func:`refuse_text_model` is the one rule that
recognises them.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..cfg import ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape, conv_text
from ..pruning.rules import Rule, no_edits
from ..registry import Block, BuildContext, RefMap, WeightUnit, register
from .layers import ConvBN, make_activation

#: the layers of Darknet's character-level text models (``rnn_layer.c``, ``gru_layer.c``, ``lstm_layer.c``:
#: fully connected recurrences over one character vector per step)
TEXT_LAYERS = ("rnn", "gru", "lstm")


def refuse_text_model(sections: Sequence[Section]) -> None:
    """A ConfigError naming the file and section for a character (text) model: a [net] that gives
    ``inputs`` (a flat vector per step) and neither ``width`` nor ``height``, or any [rnn] / [gru] /
    [lstm] section. Checked before anything is built (Darknet's parser divides by zero on them)."""
    net = sections[0]
    text_layer = next((s for s in sections[1:] if s.type in TEXT_LAYERS), None)
    if "inputs" in net and "width" not in net and "height" not in net:
        where, why = net.where("inputs"), f"inputs={net.options['inputs']} without width/height"
    elif text_layer is not None:
        where, why = text_layer.where(), f"a [{text_layer.type}] layer"
    else:
        return
    raise ConfigError(f"{where}: a character (text) model ({why}: it reads one character vector per step, "
                      "not an image; Darknet runs it with './darknet rnn'); this detector project runs image "
                      "models only")


def _refuse_pruning(block: "CRNN", g: object, x: int, outs: list[int]) -> tuple[int, dict[str, int]]:
    raise ConfigError(f"{block.where}: a recurrent layer (its hidden state feeds its own convolution from one "
                      "frame to the next); pruning does not handle it")


@register("crnn")
class CRNN(Block):
    """[crnn]: three conv (+BN) + activation units, ``.weights`` order input, self, output (each as a
    [convolutional]); the hidden state between forwards is described in the module docstring."""

    prune_rule = Rule(_refuse_pruning, no_edits)
    stateful = True

    def __init__(self, input_layer: ConvBN, self_layer: ConvBN, output_layer: ConvBN, shortcut: bool,
                 stride: float) -> None:
        super().__init__(output_layer.conv.out_channels, stride)
        self.input_layer, self.self_layer, self.output_layer = input_layer, self_layer, output_layer
        self.hidden = self_layer.conv.out_channels
        self.shortcut = shortcut
        self.carry = False  # set by reset_state: whether a forward continues the one before
        self.state: torch.Tensor | None = None  # the hidden state after the last forward (when carrying)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "CRNN":
        """parse_crnn's keys and defaults (size 3, pad 0, activation logistic, output and hidden 1)."""
        size = s.int("size", 3)
        stride = s.int("stride", 1)
        dilation = s.int("dilation", 1)
        pad = s.bool("pad", False)
        padding = s.int("padding", 0)
        if pad:
            padding = size // 2  # as Darknet: pad=1 wins over padding=
        output = s.int("output", 1)
        hidden = s.int("hidden", 1)
        groups = s.int("groups", 1)
        bn = s.bool("batch_normalize", False)
        shortcut = s.bool("shortcut", False)
        s.unsupported("xnor", "0")
        acts = [make_activation(s) for _ in range(3)]
        if min(size, stride, dilation, output, hidden, groups) < 1 or padding < 0:
            raise s.error("size, stride, dilation, output, hidden and groups must be >= 1, padding >= 0")
        if stride != 1 or 2 * padding != dilation * (size - 1):
            raise s.error(f"the convolutions must keep the map size (the state is added to itself): needs stride=1 "
                          f"and padding = dilation*(size-1)/2, got stride={stride}, size={size}, "
                          f"padding={padding}, dilation={dilation}")
        for n, what in ((ctx.c_in, "input channels"), (hidden, "hidden"), (output, "output")):
            if n % groups:
                raise s.error(f"groups={groups} must divide the {what} ({n})", "groups")

        def unit(c_in: int, c_out: int, act: torch.nn.Module) -> ConvBN:
            return ConvBN(c_in, c_out, size, 1, padding, groups, dilation, bn, act)

        return cls(unit(ctx.c_in, hidden, acts[0]), unit(hidden, hidden, acts[1]), unit(hidden, output, acts[2]),
                   shortcut, ctx.stride_in)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        return in_hw

    def reset_state(self, carry: bool = True) -> None:
        """Forget the hidden state; ``carry``: later forwards continue one another (one stream)."""
        self.state, self.carry = None, bool(carry)

    def training_problem(self) -> str | None:
        return ("[crnn] is a recurrent layer that Darknet trains on sequences of consecutive frames "
                "([net] track=1, time_steps); this trainer feeds independent images, so it runs [crnn] "
                "models at inference only")

    def _previous(self, x: torch.Tensor) -> torch.Tensor:
        """The state this forward starts from: the carried one, or zeros."""
        shape = (x.shape[0], self.hidden, x.shape[2], x.shape[3])
        if not self.carry or self.training or self.state is None:
            return x.new_zeros(shape)
        if tuple(self.state.shape) != shape:
            raise ValueError(f"{self.where}: the hidden state carried from the previous forward is for "
                             f"{tuple(self.state.shape)} (batch, hidden, h, w), this input needs {shape}: each "
                             "batch row continues its own stream; call reset_state() when a new source starts")
        return self.state.to(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise RuntimeError(f"[crnn] is a recurrent (stateful) layer: its hidden state carries from one frame "
                               f"to the next, which a traced graph (ONNX, TorchScript) cannot hold ({self.where})")
        previous = self._previous(x)
        state = self.input_layer(x) + self.self_layer(previous)
        if self.shortcut:
            state = state + previous
        if self.carry and not self.training:
            self.state = state.detach()
        return self.output_layer(state)

    def weight_units(self) -> Iterator[WeightUnit]:
        for unit in (self.input_layer, self.self_layer, self.output_layer):
            yield from unit.weight_units()

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """Darknet's ``l.bflops``: the sum of its three convolutions."""
        return LayerRow(index, "crnn", str(self.out_channels), conv_text(self.output_layer.conv)[1], inp, out,
                        sum(b for _, b in convs))
