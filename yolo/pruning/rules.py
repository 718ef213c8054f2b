"""How a block declares its pruning coupling (``Rule``) and the reusable pieces rules are made of.

A block class says, next to ``weight_units()``, ``prune_rule = Rule(trace, edits)``:

* ``trace(block, g, x, outs) -> (output tensor, named tensors)``: put the block's channel flow on
  the channel graph ``g`` (``yolo.pruning.graph``: ``g.conv`` / ``g.cat`` / ``g.ew`` ops, ``g.tie``,
  ``g.fix``, ``g.constrain`` for what its cfg keys can represent), from its input tensor ``x`` and the
  earlier block outputs ``outs``; the named tensors are the ones ``edits`` counts;
* ``edits(block, section, kept) -> {key: new value or None}``: the cfg keys that change for the kept
  channel counts, ``kept(name)`` giving the kept channels of a named tensor.

``rule_for`` only asks the block; a block without a rule is refused, naming its section. This module
imports no block (blocks import it), so a new block never edits anything here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..cfg import Section
from .graph import ChannelGraph

Named = dict[str, int]  # name -> tensor id, what ``edits`` needs to count
Count = Callable[[str], int]  # kept channels of a named tensor
Trace = Callable[[Any, ChannelGraph, int, list[int]], tuple[int, Named]]
Edits = Callable[[Any, Section, Count], dict[str, "str | None"]]


@dataclass(frozen=True)
class Rule:
    """A block type's pruning declaration: its channel flow and its cfg edits."""

    trace: Trace
    edits: Edits


def rule_for(block: nn.Module) -> Rule:
    """The block's declared ``prune_rule``; a ValueError naming the section when it has none."""
    rule = getattr(block, "prune_rule", None)
    if rule is None:
        raise ValueError(f"{block.where}: no pruning rule for [{block.section_type}] ({type(block).__name__}); "
                         "declare prune_rule = Rule(trace, edits) on the block class (yolo.pruning.rules)")
    return rule


# --- channel-wise functions (the constants removed channels carry, through ``g.ew``) ----------------
def identity(v: list[torch.Tensor]) -> torch.Tensor:
    return v[0]


def add(v: list[torch.Tensor]) -> torch.Tensor:
    return v[0] + v[1]


def act_of_sum(act: nn.Module) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """act(a + b), channel-wise: a residual sum followed by the block's activation."""
    return lambda v: act((v[0] + v[1]).view(1, -1, 1, 1)).view(-1)


# --- traces and edits blocks point at ---------------------------------------------------------------
def no_edits(block: Any, s: Section, n: Count) -> dict:
    return {}


def trace_conv(block: Any, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """One conv unit (``block.unit``) from the input: ranked by its BN scales, coupled only when
    depthwise (``ChannelGraph.conv``)."""
    out = g.conv(block.unit, x, g.tensor(block.out_channels, block.where))
    return out, {"out": out, "in": x}


def edit_conv(block: Any, s: Section, n: Count) -> dict:
    """``filters`` follows the kept outputs; a depthwise conv's ``groups`` follows ``filters``."""
    conv = next(iter(block.weight_units()))[0]
    edits = {}
    if n("out") != conv.out_channels:
        edits["filters"] = str(n("out"))
        if conv.groups > 1:  # only a depthwise conv loses channels
            edits["groups"] = str(n("out"))
    return edits


def trace_same(block: Any, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """Input and output channel by channel (pools, upsampling, dropout)."""
    return g.ew([x], block.out_channels, identity, block.where), {}


def trace_fixed_input(block: Any, g: ChannelGraph, x: int, outs: list[int]) -> tuple[int, Named]:
    """The input keeps every channel (a head's layout is not ours to change); passed through."""
    g.fix(x)
    return x, {}


PASS_THROUGH = Rule(trace_same, no_edits)  # a block whose channels pass through unchanged
FIXED_INPUT = Rule(trace_fixed_input, no_edits)  # a block that needs all its input channels


def residual(block: Any, g: ChannelGraph, x: int, y: int, down: nn.Module | None,
             fn: Callable[[list[torch.Tensor]], torch.Tensor]) -> int:
    """The block's output ``fn([y, x or down(x)])``: ``y`` tied with the residual channel by channel;
    a 1x1 projection that exists only because input != output channels must keep them different."""
    res = x if down is None else g.conv(down, x, g.tensor(block.out_channels, f"{block.where} downsample"))
    out = g.ew([y, res], block.out_channels, fn, block.where)
    if down is not None and block.out_stride == block.in_stride:  # the projection must stay
        g.constrain([g.nodes(x), g.nodes(out)], lambda i, o: i != o,
                    f"{block.where}: a 1x1 projection needs input != output channels")
    return out
