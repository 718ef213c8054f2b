"""A block declares its pruning rule and its layer-table row: a block type registered here (nothing in
yolo/info.py or yolo/pruning/ knows it) prints its own row and prunes; one without a pruning rule is
refused, naming its section."""
from __future__ import annotations

import re

import pytest
import torch

from yolo.info import layer_table, main
from yolo.layer_table import LayerRow
from yolo.prune import prune_model, trace
from yolo.pruning.rules import Rule, no_edits
from yolo.registry import Block, register

from helpers import build, randomize


def _trace_scale(block: "ScaleTestBlock", g, x: int, outs: list[int]):
    """Channel c out = factor * channel c in: the constant of a removed channel is scaled too."""
    return g.ew([x], block.out_channels, lambda v: v[0] * block.factor, block.where), {}


@register("scale_test_block")
class ScaleTestBlock(Block):
    """x * factor; Darknet has no such layer, so it says its own row and its own pruning rule."""

    prune_rule = Rule(_trace_scale, no_edits)

    def __init__(self, channels: int, factor: float, stride: float) -> None:
        super().__init__(channels, stride)
        self.factor = factor

    @classmethod
    def from_section(cls, s, ctx):
        return cls(ctx.c_in, s.float("factor", 2.0), ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def info_row(self, index, section, inp, out, convs) -> LayerRow:
        return LayerRow(index, "scale", "", f"x{self.factor:g}", inp, out, out[0] * out[1] * out[2] / 1e9)


@register("undeclared_test_block")
class UndeclaredTestBlock(Block):
    """A pass-through that declares no pruning rule (and keeps the default layer-table row)."""

    @classmethod
    def from_section(cls, s, ctx):
        return cls(ctx.c_in, ctx.stride_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


BODY = """
[convolutional]
filters=8
size=3
pad=1
batch_normalize=1
activation=leaky

[{block}]
{key}

[convolutional]
filters=8
size=1
batch_normalize=1
activation=leaky

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,5, 8,9, 12,10
classes=1
num=3
"""


def _norm(text: str) -> str:
    return " ".join(re.sub(r"\s*x\s*", "x", text).split())


def test_a_registered_block_prints_its_own_row(tmp_path, capsys):
    model = build(tmp_path, BODY.format(block="scale_test_block", key="factor=3"), c=3, w=32)
    rows = layer_table(model)
    assert rows[1].type == "scale" and rows[1].size == "x3"
    assert rows[1].bflops == pytest.approx(32 * 32 * 8 / 1e9)
    assert rows[4].type == "yolo" and rows[4].bflops == 0.0  # the head's own row, as Darknet prints it
    assert _norm(rows[1].text) == "1 scalex3 32x32x8 -> 32x32x8 0.000 BF"
    assert main([str(tmp_path / "t.cfg")]) == 0
    assert rows[1].text in capsys.readouterr().out.splitlines()


def test_a_block_without_a_row_gets_the_composite_row(tmp_path):
    model = build(tmp_path, BODY.format(block="undeclared_test_block", key=""), c=3, w=32)
    row = layer_table(model)[1]
    assert (row.type, row.filters, row.size, row.bflops) == ("undeclared_test_block", "8", "  / 1", 0.0)


def test_a_registered_block_prunes_through_its_own_rule(tmp_path):
    model = randomize(build(tmp_path, BODY.format(block="scale_test_block", key="factor=3"), c=3, w=32), seed=2)
    first = model.module_list[0].unit
    gone = torch.tensor([1, 4, 6])
    with torch.no_grad():
        first.bn.weight[gone] = 0.0  # removed; their shift leaky(beta) * 3 must reach the 1x1 conv's BN
    result = prune_model(model, threshold=1e-3)
    assert result.decision.removed_channels == len(gone)
    assert "[scale_test_block]\nfactor=3" in result.cfg_text
    assert result.model.module_list[0].out_channels == 8 - len(gone)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        a, b = model.eval().double()(x), result.model.double()(x)
    assert (a - b).abs().max().item() < 1e-6
    # the block's channel-wise function is the one pruning folds: the identity would lose the factor
    g = trace(model).graph
    op = next(op for op in g.ops if getattr(op, "kind", "") == "ew")
    assert op.fn([torch.ones(2)]).tolist() == [3.0, 3.0]


def test_a_block_without_a_pruning_rule_is_refused_naming_its_section(tmp_path):
    model = build(tmp_path, BODY.format(block="undeclared_test_block", key=""), c=3, w=32)
    with pytest.raises(ValueError, match=r"t\.cfg:\d+.*no pruning rule for \[undeclared_test_block\]"):
        prune_model(model, ratio=0.3)
