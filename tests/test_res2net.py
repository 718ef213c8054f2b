"""[res2net] and [triangle]: channel counts and a forward pass recomputed from blocks.md."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from yolo import ConfigError, Darknet
from yolo.cfg import parse_cfg_text
from yolo.registry import BuildContext, build_block

ACT = 0.1  # leaky slope


def build(text: str, c_in: int):
    section = parse_cfg_text("[net]\n" + text, "block.cfg")[1]
    block = build_block(section, BuildContext(c_in, channels=[c_in], strides=[1.0]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-default BN statistics everywhere
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return block.eval()


def cb(x, unit, stride=1, act=True):
    """conv -> BN (eps 1e-5) -> leaky, written out with torch.nn.functional."""
    w = unit.conv.weight
    y = F.conv2d(x, w, None, stride, w.shape[-1] // 2)
    bn = unit.bn
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5)
    return F.leaky_relu(y, ACT) if act else y


def multi_scale(block, x, width, scale, stride, stype):
    """blocks.md: conv1, split into scale chunks, hierarchical 3x3s, concatenation."""
    y = cb(x, block.conv1)
    spx = [y[:, i * width:(i + 1) * width] for i in range(scale)]
    nums = 1 if scale == 1 else scale - 1
    outs, sp = [], None
    for i in range(nums):
        sp = spx[i] if i == 0 or stype == "stage" else sp + spx[i]
        sp = cb(sp, block.convs[i], stride)
        outs.append(sp)
    if scale > 1:
        last = spx[nums]
        outs.append(F.avg_pool2d(last, 3, stride, 1) if stype == "stage" else last)
    return torch.cat(outs, 1)


RES2NET_CASES = [  # (keys, C_in, expected width, scale, stride, stype, downsample)
    ("planes=16\nbaseWidth=26\nscale=4", 32, 6, 4, 1, "normal", False),
    ("planes=16\nbaseWidth=26\nscale=4\nstride=2\nstype=stage", 16, 6, 4, 2, "stage", True),
    ("planes=16\nbaseWidth=64\nscale=1", 32, 16, 1, 1, "normal", False),
    ("planes=8\nscale=3\nstype=stage", 24, 3, 3, 1, "stage", True),
]


@pytest.mark.parametrize("keys,c_in,width,scale,stride,stype,down", RES2NET_CASES)
def test_res2net_matches_formulas(keys, c_in, width, scale, stride, stype, down):
    block = build(f"[res2net]\n{keys}\n", c_in)
    planes = int(keys.split("\n")[0].split("=")[1])
    assert block.out_channels == planes * 2
    assert block.conv1.conv.out_channels == width * scale
    assert (block.downsample is not None) == down
    x = torch.randn(2, c_in, 12, 16)
    with torch.no_grad():
        z = cb(multi_scale(block, x, width, scale, stride, stype), block.conv3, act=False)
        identity = cb(x, block.downsample, stride, act=False) if down else x
        expected = z + identity  # linear: no activation after the sum
        got = block(x)
    assert got.shape == (2, planes * 2, 12 // stride, 16 // stride)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keys,c_in,width,scale,stype", [
    ("planes=64\nbaseWidth=16\nscale=4", 48, 16, 4, "normal"),
    ("planes=32\nbaseWidth=32\nscale=2\nstype=stage", 20, 16, 2, "stage"),
    ("planes=32\nscale=1", 8, 8, 1, "normal"),
])
def test_triangle_matches_formulas(keys, c_in, width, scale, stype):
    block = build(f"[triangle]\n{keys}\n", c_in)
    assert block.out_channels == width * scale
    x = torch.randn(1, c_in, 10, 14)
    with torch.no_grad():
        torch.testing.assert_close(block(x), multi_scale(block, x, width, scale, 1, stype),
                                   rtol=1e-5, atol=1e-5)
    assert not hasattr(block, "conv3") and not hasattr(block, "downsample")


def test_stream_order_of_res2net():
    block = build("[res2net]\nplanes=8\nstride=2\nstype=stage\n", 8)
    units = list(block.weight_units())
    expected = [block.conv1, *block.convs, block.conv3, block.downsample]
    assert [conv for conv, _ in units] == [u.conv for u in expected]
    assert all(bn is u.bn for (_, bn), u in zip(units, expected))


@pytest.mark.parametrize("text,message,line", [
    ("[res2net]\nplanes=8\ninplanes=12\n", "inplanes=12 but the input has 16 channels", 4),
    ("[res2net]\nplanes=8\nstride=2\n", "stride != 1 needs stype=stage", 4),
    ("[triangle]\nbaseWidth=16\n", "missing required key 'planes'", 2),
    ("[res2net]\nplanes=8\nstype=wide\n", "expected one of normal, stage", 4),
])
def test_configuration_errors_name_file_and_line(text, message, line):
    with pytest.raises(ConfigError) as e:
        build(text, 16)
    assert message in str(e.value) and f"block.cfg:{line}:" in str(e.value)


@pytest.mark.parametrize("cfg", ["res2net-yolov3.cfg", "res2net-triangle-yolov3.cfg"])
def test_res2net_cfgs_have_three_heads_at_32_16_8(cfg):
    model = Darknet(cfg)
    assert model.input_size == (608, 608)
    assert model.strides == [32, 16, 8]
    res2net = [b for b in model.module_list if b.section_type == "res2net"]
    assert [b.out_channels for b in res2net] == [64] + [128] * 2 + [256] * 8 + [512] * 8 + [1024] * 4
    triangles = [(b.out_channels, b.out_stride) for b in model.module_list if b.section_type == "triangle"]
    if "triangle" in cfg:
        assert triangles == [(1024, 32), (1024, 32), (512, 16), (512, 16), (256, 8), (256, 8)]
    else:
        assert triangles == []
    with torch.no_grad():
        raw = model.train()(torch.rand(1, 3, 64, 96))
    assert [tuple(r.shape) for r in raw] == [(1, 3, 2, 3, 85), (1, 3, 4, 6, 85), (1, 3, 8, 12, 85)]
