"""Sections that move tensors around: [route] [shortcut] [upsample] [maxpool] [dropout]."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..cfg import CfgWarning, ConfigError, Section
from ..layer_table import ConvFigures, LayerRow, Shape
from ..pruning.graph import ChannelGraph
from ..pruning.rules import PASS_THROUGH, Named, Rule, no_edits
from ..registry import Block, BuildContext, RefMap, register
from .conv import keep_activation
from .layers import make_activation


def _wxh(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def _trace_route(block: "Route", g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """The output's channels are its inputs' (slices); ``groups=G``: the G slices of each input have
    the same kept channels (so every slice keeps the same count)."""
    srcs = [(outs[i], a, b) for i, (a, b) in zip(block.inputs, block.slices)]
    for i, (a, b) in zip(block.inputs, block.slices):
        part, t = b - a, outs[i]
        for k in range(1, g.sizes[t] // part):  # [route] groups: every slice keeps the same channels
            g.tie(g.nodes(t, 0, part), g.nodes(t, k * part, (k + 1) * part))
    return g.cat(srcs, block.where), {}


@register("route")
class Route(Block):
    """Concatenate earlier outputs; with groups, the group_id-th channel slice of each."""

    prune_rule = Rule(_trace_route, no_edits)

    def __init__(self, inputs: tuple[int, ...], slices: list[tuple[int, int]], stride: float) -> None:
        super().__init__(sum(b - a for a, b in slices), stride)
        self.inputs = inputs
        self.slices = slices
        self.whole = True  # no channel slicing (groups=1)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Route":
        layers = s.ints("layers")
        if not layers:
            raise s.error("needs at least one layer", "layers")
        groups = s.int("groups", 1)
        group_id = s.int("group_id", 0)
        if groups < 1 or not 0 <= group_id < groups:
            raise s.error(f"needs groups >= 1 and 0 <= group_id < groups, got {groups}, {group_id}",
                          "group_id")
        inputs = tuple(ctx.layer_index(s, v, "layers") for v in layers)
        slices = []
        for i in inputs:
            c = ctx.channels[i]
            if c % groups:
                raise s.error(f"layer {i} has {c} channels, not divisible by groups={groups}", "groups")
            part = c // groups
            slices.append((part * group_id, part * (group_id + 1)))
        strides = {ctx.strides[i] for i in inputs}
        if len(strides) > 1:
            raise s.error(f"layers {list(inputs)} have different strides {sorted(strides)}: "
                          "their maps cannot be concatenated", "layers")
        for i in inputs:
            keep_activation(ctx, i)  # Darknet: an xnor layer read here loses bin_output
        block = cls(inputs, slices, ctx.strides[inputs[0]])
        block.whole = groups == 1
        block.onlyforward = s.int("onlyforward", 0)  # Darknet: no backward through it (the trainer honours it)
        return block

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        first = refs[0]
        for r in refs[1:]:
            if r.hw != first.hw:
                raise ConfigError(f"{self.where}: cannot concatenate layer {first.index} ({first.where}, "
                                  f"{_wxh(first.hw)}) with layer {r.index} ({r.where}, {_wxh(r.hw)}): "
                                  "their maps differ in size")
        return first.hw

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        if not self.whole:
            refs = [r[:, a:b] for r, (a, b) in zip(refs, self.slices)]
        return refs[0] if len(refs) == 1 else torch.cat(refs, 1)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """The layer list (and ``group_id/groups``), no input column, 0 BFLOPs."""
        layers = " ".join(str(j) for j in self.inputs)
        groups = section.int("groups", 1)
        if groups > 1:
            layers += f" {section.int('group_id', 0)}/{groups}"
        return LayerRow(index, "route", layers, "", None, out, 0.0)


def _steps(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int] | None:
    """(stride, sample) of ``shortcut_cpu`` adding a ``src`` (h, w) map to a ``dst`` one: src read at every
    stride-th pixel, or written to every sample-th; None where Darknet's asserts fail (the two sides
    disagree) or the sizes differ without a step (its top-left crop of a same-stride map: a cfg error)."""
    if src == dst:
        return 1, 1
    stride, sample = src[1] // dst[1], dst[1] // src[1]
    if stride != src[0] // dst[0] or sample != dst[0] // src[0] or max(stride, sample) < 2:
        return None
    return max(stride, 1), max(sample, 1)


def _resample(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``r`` on ``like``'s grid as ``shortcut_cpu`` lays it: every stride-th pixel of a larger map; a
    smaller one spread to every sample-th pixel (zeros between)."""
    (h1, w1), (h2, w2) = r.shape[-2:], like.shape[-2:]
    steps = _steps((int(h1), int(w1)), (int(h2), int(w2)))
    if steps is None:
        raise ValueError(f"cannot add a {w1}x{h1} map to a {w2}x{h2} one")
    stride, sample = steps
    if stride > 1:
        return r[:, :, ::stride, ::stride][:, :, :h2, :w2]
    out = r.new_zeros(r.shape[0], r.shape[1], h2, w2)
    out[:, :, :h1 * sample:sample, :w1 * sample:sample] = r
    return out


def _trace_shortcut(block: "Shortcut", g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """Every layer added into the sum, channel by channel (Darknet's partial overlap too)."""
    def fn(v: list[torch.Tensor]) -> torch.Tensor:
        out = v[0].clone()
        for r in v[1:]:
            k = min(len(r), len(out))
            out[:k] += r[:k]
        return block.act(out.view(1, -1, 1, 1)).view(-1)

    return g.ew([x, *(outs[i] for i in block.inputs)], block.out_channels, fn, block.where), {}


@register("shortcut")
class Shortcut(Block):
    """Residual sum with an earlier output, then the activation (Darknet default linear).

    When channel counts differ, Darknet adds the overlapping channels; so do we. A map k times the
    size of this input (ResNet's downsampling blocks in resnet50.cfg: from=-4 reaches back past the
    stride-2 conv) is added at every k-th pixel from the top left, as ``shortcut_cpu`` (pjreddie's
    Darknet and AlexeyAB's up to b267e344, January 2020) computes it; AlexeyAB's Darknet since then
    asserts equal sizes in ``parse_shortcut`` (and without asserts adds the flat buffers, meaningless),
    so such a cfg is built with a warning saying so.
    """

    prune_rule = Rule(_trace_shortcut, no_edits)

    def __init__(self, inputs: tuple[int, ...], channels: int, ref_channels: list[int],
                 act: nn.Module, stride: float) -> None:
        super().__init__(channels, stride)
        self.inputs = inputs
        self.ref_channels = ref_channels
        self.act = act

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Shortcut":
        inputs = tuple(ctx.layer_index(s, v, "from") for v in s.ints("from"))
        act = make_activation(s, "linear")
        s.unsupported("weights_type", "none")
        s.unsupported("weights_normalization", "none")
        for i in inputs:
            ratio = max(ctx.strides[i], ctx.stride_in) / min(ctx.strides[i], ctx.stride_in)
            if ratio != round(ratio):
                raise s.error(f"layer {i} has stride {ctx.strides[i]}, this input has {ctx.stride_in}: "
                              "the maps cannot be added (neither is a whole multiple of the other)", "from")
            if ratio != 1:
                warnings.warn(f"{s.where('from')}: layer {i} has stride {ctx.strides[i]:g}, this input "
                              f"{ctx.stride_in:g}: added at a step of {round(ratio)} pixels as pjreddie's Darknet "
                              "does (AlexeyAB's Darknet asserts equal sizes here)", CfgWarning, stacklevel=3)
        for i in (len(ctx.channels) - 1, inputs[0]):
            keep_activation(ctx, i)  # Darknet: the previous and the (first) from layer lose bin_output
        return cls(inputs, ctx.c_in, [ctx.channels[i] for i in inputs], act, ctx.stride_in)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        for r in refs:
            if _steps(r.hw, in_hw) is None:
                raise ConfigError(f"{self.where}: cannot add layer {r.index} ({r.where}, {_wxh(r.hw)}) to "
                                  f"this section's input ({_wxh(in_hw)}): their maps differ in size "
                                  "(and neither is a whole multiple of the other in both sides)")
        return in_hw

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        for r, c in zip(refs, self.ref_channels):
            if r.shape[-2:] != x.shape[-2:]:
                r = _resample(r, x)
            if c == self.out_channels:
                x = x + r
            else:
                n = min(c, self.out_channels)
                x = torch.cat([x[:, :n] + r[:, :n], x[:, n:]], 1)
        return self.act(x)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """``out_w * out_h * out_c * n / 1e9``, ``n`` = number of ``from`` layers (``shortcut_layer.c``)."""
        n = max(1, len(self.inputs))
        return LayerRow(index, "shortcut", " ".join(str(j) for j in self.inputs), "", inp, out,
                        out[0] * out[1] * out[2] * n / 1e9)


@register("upsample")
class Upsample(Block):
    prune_rule = PASS_THROUGH

    def __init__(self, channels: int, factor: int, stride: float) -> None:
        super().__init__(channels, stride)
        self.factor = factor

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Upsample":
        factor = s.int("stride", 2)
        if factor < 1:
            raise s.error(f"expected a positive stride, got {factor}", "stride")
        return cls(ctx.c_in, factor, ctx.stride_in / factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="nearest")

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        factor = out[0] // inp[0] if inp and inp[0] else 0
        return LayerRow(index, "upsample", "", f"{factor:2d}x", inp, out, 0.0)


@register("maxpool")
class MaxPool(Block):
    """Darknet max-pool: total padding ``size - 1`` by default, left/top gets half (floor).

    Output side ``(n + padding - size) // stride + 1`` as in Darknet. Padding that no window
    reaches (e.g. the right column of a 2x2/2 pool on an even map) is never materialised, and
    symmetric padding goes to ``max_pool2d`` itself: padding a map with ``F.pad`` copies it.
    """

    prune_rule = PASS_THROUGH

    def __init__(self, channels: int, size: int, step: int, padding: int, stride: float) -> None:
        super().__init__(channels, stride)
        self.size, self.step, self.padding = size, step, padding
        self._plans: dict[tuple[int, int], tuple[tuple[int, int, int, int], int]] = {}

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "MaxPool":
        size = s.int("size", 1)
        step = s.int("stride", 1)
        padding = s.int("padding", size - 1)
        if size < 1 or step < 1 or padding < 0:
            raise s.error(f"needs size >= 1, stride >= 1, padding >= 0; got {size}, {step}, {padding}")
        return cls(ctx.c_in, size, step, padding, ctx.stride_in * step)

    def out_hw(self, in_hw: tuple[int, int], refs: list[RefMap]) -> tuple[int, int]:
        return tuple((n + self.padding - self.size) // self.step + 1 for n in in_hw)  # type: ignore[return-value]

    def _side(self, n: int) -> tuple[int, int]:
        """(low, high) padding actually reached by Darknet's windows on a side of length n."""
        lo = self.padding // 2
        out = (n + self.padding - self.size) // self.step + 1
        hi = max(0, (out - 1) * self.step - lo + self.size - n)
        return lo, hi

    def _plan(self, h: int, w: int) -> tuple[tuple[int, int, int, int], int]:
        """(F.pad amounts, max_pool2d padding) for an h x w input, cached per size."""
        plan = self._plans.get((h, w))
        if plan is None:
            (top, bottom), (left, right) = self._side(h), self._side(w)
            if top == bottom == left == right and 2 * top <= self.size:
                plan = ((0, 0, 0, 0), top)
            else:
                plan = ((left, right, top, bottom), 0)
            self._plans[(h, w)] = plan
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads, inner = self._plan(int(x.shape[-2]), int(x.shape[-1]))
        if any(pads):
            x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.step, inner)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        """Darknet counts the compares: ``size * size * C * out_h * out_w / 1e9`` (``maxpool_layer.c``)."""
        k, s = self.size, self.step
        return LayerRow(index, "max", "", f"{k:2d}x{k:2d}/{s:2d}", inp, out, k * k * out[2] * out[0] * out[1] / 1e9)


@register("dropout")
class Dropout(Block):
    prune_rule = PASS_THROUGH

    def __init__(self, channels: int, p: float, stride: float) -> None:
        super().__init__(channels, stride)
        self.drop = nn.Dropout(p)

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "Dropout":
        p = s.float("probability", 0.5)
        if not 0 <= p < 1:
            raise s.error(f"expected 0 <= probability < 1, got {p}", "probability")
        return cls(ctx.c_in, p, ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x)

    def info_row(self, index: int, section: Section, inp: Shape | None, out: Shape,
                 convs: ConvFigures) -> LayerRow:
        return LayerRow(index, "dropout", "", f"p = {self.drop.p:.2f}", inp, out, 0.0)
