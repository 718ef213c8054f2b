"""What pruning knows about each section type, in one table: how its channels flow (``trace``: ops
and ties on the channel graph, plus the constraints its cfg keys impose) and how its keys change
for the kept channel counts (``edits``).

What each section couples:

* [convolutional]: nothing across its input and output, except a depthwise conv (groups = in =
  out: channel c in with channel c out; ``groups`` follows ``filters``); other grouped convs and
  convs without BatchNorm keep all their channels. ``asymmetric=1``: the three branches' outputs
  are one channel (their BN scales rank it together).
* [route]: the output's channels are its inputs' (slices); ``groups=G``: the G slices of each input
  have the same kept channels (so every slice keeps the same count).
* [shortcut]: every layer added into the sum, channel by channel (Darknet's partial overlap too).
* [maxpool] [upsample] [dropout]: input and output, channel by channel.
* [yolo]: its input keeps every channel.
* [res2net] / [triangle]: the ``scale`` chunks of conv1 and the outputs of the 3x3 convs, by index
  within a chunk (widths stay equal); [res2net] also its output with its residual. Its keys:
  ``planes`` = out / 2 (out stays even) and a ``baseWidth`` with ``planes * baseWidth // 64`` =
  the kept width; a 1x1 projection stays (input != output) when it was there.
* [bottleneck]: conv1 and conv2 outputs (one ``planes``); output with residual; ``expansion`` =
  out / planes (a whole number).
* [scbottleneck]: the six half-width maps (conv1_a, k1, conv1_b, k2, k3 via the gate, k4); output
  with residual; out = 8 x half (``planes`` = 2 x half).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..blocks.acnet import ACConv
from ..blocks.conv import Convolutional
from ..blocks.res2net import Res2Net, Triangle, _MultiScale
from ..blocks.resnet import Bottleneck
from ..blocks.routing import Dropout, MaxPool, Route, Shortcut, Upsample
from ..blocks.scnet import SCBottleneck
from ..blocks.yolo_layer import YOLOLayer
from ..cfg import Section
from ..registry import Block
from .graph import ChannelGraph

Named = dict[str, int]  # name -> tensor id, what ``edits`` needs to count
Count = Callable[[str], int]  # kept channels of a named tensor


@dataclass
class Rule:
    trace: Callable[[Block, ChannelGraph, int, list[int]], tuple[int, Named]]
    edits: Callable[[Block, Section, Count], dict[str, "str | None"]]


def _identity(v: list[torch.Tensor]) -> torch.Tensor:
    return v[0]


def _sum(v: list[torch.Tensor]) -> torch.Tensor:
    return v[0] + v[1]


def _act_of_sum(act) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    return lambda v: act((v[0] + v[1]).view(1, -1, 1, 1)).view(-1)


def _no_edits(block: Block, s: Section, n: Count) -> dict:
    return {}


# --- standard sections ----------------------------------------------------------------------------
def _trace_conv(block: Block, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    out = g.conv(block.unit, x, g.tensor(block.out_channels, block.where))
    return out, {"out": out, "in": x}


def _edit_conv(block: Block, s: Section, n: Count) -> dict:
    conv = next(iter(block.weight_units()))[0]
    edits = {}
    if n("out") != conv.out_channels:
        edits["filters"] = str(n("out"))
        if conv.groups > 1:  # only a depthwise conv loses channels
            edits["groups"] = str(n("out"))
    return edits


def _trace_route(block: Route, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    srcs = [(outs[i], a, b) for i, (a, b) in zip(block.inputs, block.slices)]
    for i, (a, b) in zip(block.inputs, block.slices):
        part, t = b - a, outs[i]
        for k in range(1, g.sizes[t] // part):  # [route] groups: every slice keeps the same channels
            g.tie(g.nodes(t, 0, part), g.nodes(t, k * part, (k + 1) * part))
    return g.cat(srcs, block.where), {}


def _trace_shortcut(block: Shortcut, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    def fn(v: list[torch.Tensor]) -> torch.Tensor:
        out = v[0].clone()
        for r in v[1:]:
            k = min(len(r), len(out))
            out[:k] += r[:k]
        return block.act(out.view(1, -1, 1, 1)).view(-1)

    return g.ew([x, *(outs[i] for i in block.inputs)], block.out_channels, fn, block.where), {}


def _trace_same(block: Block, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    return g.ew([x], block.out_channels, _identity, block.where), {}


def _trace_yolo(block: Block, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    g.fix(x)  # the head's layout (anchors x (5 + classes)) is not ours to change
    return x, {}


# --- composite sections -------------------------------------------------------------------------------
def _trace_multiscale(b: _MultiScale, g: ChannelGraph, x: int) -> tuple[int, Named]:
    w, s = b.width, b.scale
    t1 = g.conv(b.conv1, x, g.tensor(w * s, f"{b.where} conv1"))
    chunks = [g.cat([(t1, k * w, (k + 1) * w)], f"{b.where} chunk {k}") for k in range(s)]
    for k in range(1, s):  # widths stay equal: channel j of every chunk is one decision
        g.tie(g.nodes(chunks[0]), g.nodes(chunks[k]))
    outs, sp = [], chunks[0]
    for i, conv in enumerate(b.convs):
        if i > 0:
            sp = chunks[i] if b.stype == "stage" else g.ew([sp, chunks[i]], w, _sum, f"{b.where} sum {i}")
        sp = g.conv(conv, sp, g.tensor(w, f"{b.where} convs[{i}]"))
        g.tie(g.nodes(sp), g.nodes(chunks[0]))
        outs.append(sp)
    if s > 1:
        last = chunks[b.nums]
        if b.pool is not None:
            last = g.ew([last], w, _identity, f"{b.where} pool")  # constant only away from the border
        outs.append(last)
    cat = g.cat([(t, 0, w) for t in outs], f"{b.where} cat")
    return cat, {"width": chunks[0], "in": x}


def _width_ok(planes: int, width: int) -> int | None:
    """A baseWidth with planes * baseWidth // 64 == width, or None."""
    if planes < 1 or width < 1:
        return None
    bw = -(-64 * width // planes)
    return bw if planes * bw // 64 == width else None


def _residual(block: Block, g: ChannelGraph, x: int, y: int, down, fn) -> int:
    res = x if down is None else g.conv(down, x, g.tensor(block.out_channels, f"{block.where} downsample"))
    out = g.ew([y, res], block.out_channels, fn, block.where)
    if down is not None and block.out_stride == block.in_stride:  # the projection must stay
        g.constrain([g.nodes(x), g.nodes(out)], lambda i, o: i != o,
                    f"{block.where}: a 1x1 projection needs input != output channels")
    return out


def _trace_res2net(b: Res2Net, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    cat, named = _trace_multiscale(b, g, x)
    y = g.conv(b.conv3, cat, g.tensor(b.out_channels, f"{b.where} conv3"))
    out = _residual(b, g, x, y, b.downsample, _sum)
    g.constrain([g.nodes(named["width"]), g.nodes(out)],
                lambda w, o: o % 2 == 0 and _width_ok(o // 2, w) is not None,
                f"{b.where}: planes = out / 2 and width = planes * baseWidth // 64")
    return out, {**named, "out": out}


def _edit_res2net(b: Res2Net, s: Section, n: Count) -> dict:
    planes, width = n("out") // 2, n("width")
    edits = _inplanes(s, n)
    if planes != b.out_channels // 2 or width != b.width:
        old_bw = s.int("baseWidth", 26)
        edits["planes"] = str(planes)
        edits["baseWidth"] = str(old_bw if planes * old_bw // 64 == width else _width_ok(planes, width))
    return edits


def _trace_triangle(b: Triangle, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    cat, named = _trace_multiscale(b, g, x)
    return cat, named


def _edit_triangle(b: Triangle, s: Section, n: Count) -> dict:
    edits = _inplanes(s, n)
    if n("width") != b.width:
        edits["planes"], edits["baseWidth"] = str(n("width")), "64"
    return edits


def _inplanes(s: Section, n: Count) -> dict:
    return {"inplanes": str(n("in"))} if "inplanes" in s else {}


def _trace_bottleneck(b: Bottleneck, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    planes = b.conv1.conv.out_channels
    a = g.conv(b.conv1, x, g.tensor(planes, f"{b.where} conv1"))
    c = g.conv(b.conv2, a, g.tensor(planes, f"{b.where} conv2"))
    g.tie(g.nodes(a), g.nodes(c))  # one `planes`
    y = g.conv(b.conv3, c, g.tensor(b.out_channels, f"{b.where} conv3"))
    out = _residual(b, g, x, y, b.downsample, _act_of_sum(b.act))
    g.constrain([g.nodes(a), g.nodes(out)], lambda p, o: p >= 1 and o % p == 0,
                f"{b.where}: out = planes * expansion")
    return out, {"planes": a, "out": out}


def _edit_bottleneck(b: Bottleneck, s: Section, n: Count) -> dict:
    p, o = n("planes"), n("out")
    if p == b.conv1.conv.out_channels and o == b.out_channels:
        return {}
    return {"planes": str(p), "expansion": str(o // p)}


def _trace_scbottleneck(b: SCBottleneck, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    h, w = b.conv1_a.conv.out_channels, b.where
    sc = b.scconv
    a1 = g.conv(b.conv1_a, x, g.tensor(h, f"{w} conv1_a"))
    a2 = g.conv(b.k1, a1, g.tensor(h, f"{w} k1"))
    b1 = g.conv(b.conv1_b, x, g.tensor(h, f"{w} conv1_b"))
    pooled = g.ew([b1], h, _identity, f"{w} pool")
    k2 = g.conv(sc.k2, pooled, g.tensor(h, f"{w} k2"))
    k3 = g.conv(sc.k3, b1, g.tensor(h, f"{w} k3"))
    gate = g.ew([k3, b1, k2], h, lambda v: v[0] * torch.sigmoid(v[1] + v[2]), f"{w} gate")
    b2 = g.conv(sc.k4, gate, g.tensor(h, f"{w} k4"))
    for t in (a2, b1, b2):  # one `planes`: every half-width map keeps the same count
        g.tie(g.nodes(a1), g.nodes(t))
    cat = g.cat([(a2, 0, h), (b2, 0, h)], f"{w} cat")
    y = g.conv(b.conv3, cat, g.tensor(b.out_channels, f"{w} conv3"))
    out = _residual(b, g, x, y, b.downsample, _act_of_sum(b.act))
    g.constrain([g.nodes(a1), g.nodes(out)], lambda hh, o: hh >= 1 and o == 8 * hh,
                f"{w}: out = 4 * planes, half = planes / 2")
    return out, {"half": a1, "out": out}


def _edit_scbottleneck(b: SCBottleneck, s: Section, n: Count) -> dict:
    h = n("half")
    return {} if h == b.conv1_a.conv.out_channels else {"planes": str(2 * h)}


RULES: dict[type, Rule] = {
    Convolutional: Rule(_trace_conv, _edit_conv),
    ACConv: Rule(_trace_conv, _edit_conv),
    Route: Rule(_trace_route, _no_edits),
    Shortcut: Rule(_trace_shortcut, _no_edits),
    Upsample: Rule(_trace_same, _no_edits),
    MaxPool: Rule(_trace_same, _no_edits),
    Dropout: Rule(_trace_same, _no_edits),
    YOLOLayer: Rule(_trace_yolo, _no_edits),
    Res2Net: Rule(_trace_res2net, _edit_res2net),
    Triangle: Rule(_trace_triangle, _edit_triangle),
    Bottleneck: Rule(_trace_bottleneck, _edit_bottleneck),
    SCBottleneck: Rule(_trace_scbottleneck, _edit_scbottleneck),
}


def rule_for(block: Block) -> Rule:
    rule = RULES.get(type(block))
    if rule is None:
        raise ValueError(f"{block.where}: no pruning rule for [{block.section_type}] "
                         f"({type(block).__name__}); add one to yolo/pruning/sections.py")
    return rule
