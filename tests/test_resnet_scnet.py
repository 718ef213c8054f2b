"""[bottleneck] (ResNet, optionally ACNet 3x3) and [scbottleneck] (SCNet); the -50 YOLOv3 cfgs."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from yolo import ConfigError, Darknet
from yolo.blocks.layers import ACUnit
from yolo.blocks.resnet import Bottleneck
from yolo.blocks.scnet import SCBottleneck

from helpers import NET, build, randomize


def cb(x: torch.Tensor, unit, stride: int = 1, padding=0) -> torch.Tensor:
    """conv + eval BatchNorm, written out with torch.nn.functional."""
    z = F.conv2d(x, unit.conv.weight, None, stride, padding)
    bn = unit.bn
    return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5)


def cb_params(c_in: int, c_out: int, k: int | tuple[int, int] = 1) -> int:
    kh, kw = (k, k) if isinstance(k, int) else k
    return c_in * c_out * kh * kw + 2 * c_out


def kernel_shapes(block) -> list[tuple[int, ...]]:
    return [tuple(conv.weight.shape) for conv, _ in block.weight_units()]


# --- [bottleneck] -------------------------------------------------------------------------
BOTTLENECKS = [  # (c_in, planes, stride, asymmetric)
    (16, 4, 1, False),  # identity residual
    (8, 4, 2, False),  # stride 2 + downsample
    (8, 4, 1, False),  # downsample for channels only
    (16, 4, 1, True),
    (8, 4, 2, True),
]


@pytest.mark.parametrize("c_in,planes,stride,asym", BOTTLENECKS)
def test_bottleneck_forward_is_the_formula(tmp_path, c_in, planes, stride, asym):
    body = f"[bottleneck]\nplanes={planes}\nstride={stride}\nasymmetric={int(asym)}\n"
    model = randomize(build(tmp_path, body, c=c_in)).eval()
    blk = model.module_list[0]
    assert isinstance(blk, Bottleneck)
    out = planes * 4
    assert blk.out_channels == out and blk.out_stride == stride
    assert (blk.downsample is None) == (stride == 1 and c_in == out)
    x = torch.randn(2, c_in, 11, 14)
    y = F.relu(cb(x, blk.conv1))
    if asym:
        u = blk.conv2
        assert isinstance(u, ACUnit)
        y = F.relu(cb(y, u.square, stride, 1) + cb(y, u.hor, stride, (0, 1)) + cb(y, u.ver, stride, (1, 0)))
    else:
        y = F.relu(cb(y, blk.conv2, stride, 1))
    y = cb(y, blk.conv3)
    identity = cb(x, blk.downsample, stride) if blk.downsample is not None else x
    expected = F.relu(y + identity)
    with torch.no_grad():
        got = blk(x)
    assert got.shape == (2, out, (11 - 1) // stride + 1, (14 - 1) // stride + 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in,planes,stride,asym", BOTTLENECKS)
def test_bottleneck_parameters_and_stream_order(tmp_path, c_in, planes, stride, asym):
    body = f"[bottleneck]\nplanes={planes}\nstride={stride}\nasymmetric={int(asym)}\n"
    blk = build(tmp_path, body, c=c_in).module_list[0]
    p, out = planes, planes * 4
    down = stride != 1 or c_in != out
    middle = [(p, p, 3, 3)] + ([(p, p, 1, 3), (p, p, 3, 1)] if asym else [])
    shapes = [(p, c_in, 1, 1)] + middle + [(out, p, 1, 1)] + ([(out, c_in, 1, 1)] if down else [])
    assert kernel_shapes(blk) == shapes
    expected = (cb_params(c_in, p) + cb_params(p, p, 3) + cb_params(p, out)
                + (cb_params(c_in, out) if down else 0)
                + (cb_params(p, p, (1, 3)) + cb_params(p, p, (3, 1)) if asym else 0))
    assert sum(t.numel() for t in blk.parameters()) == expected


def test_bottleneck_expansion_and_activation_keys(tmp_path):
    body = "[bottleneck]\nplanes=4\nexpansion=2\nactivation=leaky\n"
    blk = randomize(build(tmp_path, body, c=8)).module_list[0].eval()
    assert blk.out_channels == 8 and blk.downsample is None
    x = torch.randn(1, 8, 6, 6)
    y = F.leaky_relu(cb(x, blk.conv1), 0.1)
    y = cb(F.leaky_relu(cb(y, blk.conv2, 1, 1), 0.1), blk.conv3)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), F.leaky_relu(y + x, 0.1), rtol=1e-5, atol=1e-5)


# --- [scbottleneck] -----------------------------------------------------------------------
SCBOTTLENECKS = [  # (c_in, planes, stride, pooling_r, input h, w)
    (32, 8, 1, 4, 16, 16),  # identity residual
    (16, 8, 2, 2, 16, 16),  # stride 2 + downsample
    (16, 8, 1, 4, 18, 14),  # pooled map not a divisor: nearest upsampling to 18x14
]


def scnet_formula(blk: SCBottleneck, x: torch.Tensor, stride: int, r: int) -> torch.Tensor:
    a = F.relu(cb(x, blk.conv1_a))
    a = F.relu(cb(a, blk.k1, stride, 1))
    b = F.relu(cb(x, blk.conv1_b))
    sc = blk.scconv
    k2 = cb(F.avg_pool2d(b, r, r), sc.k2, 1, 1)
    gate = torch.sigmoid(b + F.interpolate(k2, size=b.shape[-2:], mode="nearest"))
    b = cb(b, sc.k3, 1, 1) * gate
    b = F.relu(cb(b, sc.k4, stride, 1))
    y = cb(torch.cat((a, b), 1), blk.conv3)
    identity = cb(x, blk.downsample, stride) if blk.downsample is not None else x
    return F.relu(y + identity)


@pytest.mark.parametrize("c_in,planes,stride,r,h,w", SCBOTTLENECKS)
def test_scbottleneck_forward_is_the_formula(tmp_path, c_in, planes, stride, r, h, w):
    body = f"[scbottleneck]\nplanes={planes}\nstride={stride}\npooling_r={r}\n"
    blk = randomize(build(tmp_path, body, c=c_in)).module_list[0].eval()
    assert isinstance(blk, SCBottleneck)
    assert blk.out_channels == planes * 4 and blk.out_stride == stride
    assert (blk.downsample is None) == (stride == 1 and c_in == planes * 4)
    x = torch.randn(2, c_in, h, w)
    with torch.no_grad():
        got = blk(x)
        expected = scnet_formula(blk, x, stride, r)
        # the gate matters: without it the result differs
        no_gate = blk.conv3(torch.cat((blk.k1(blk.conv1_a(x)),
                                       blk.scconv.k4(blk.scconv.k3(blk.conv1_b(x)))), 1))
    assert got.shape == (2, planes * 4, (h - 1) // stride + 1, (w - 1) // stride + 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    ident = blk.downsample(x) if blk.downsample is not None else x
    assert not torch.allclose(got, F.relu(no_gate + ident), atol=1e-3)


@pytest.mark.parametrize("c_in,planes,stride,r,h,w", SCBOTTLENECKS)
def test_scbottleneck_parameters_and_stream_order(tmp_path, c_in, planes, stride, r, h, w):
    body = f"[scbottleneck]\nplanes={planes}\nstride={stride}\npooling_r={r}\n"
    blk = build(tmp_path, body, c=c_in).module_list[0]
    hf, out = planes // 2, planes * 4
    down = stride != 1 or c_in != out
    shapes = [(hf, c_in, 1, 1), (hf, hf, 3, 3), (hf, c_in, 1, 1), (hf, hf, 3, 3), (hf, hf, 3, 3),
              (hf, hf, 3, 3), (out, planes, 1, 1)] + ([(out, c_in, 1, 1)] if down else [])
    assert kernel_shapes(blk) == shapes
    assert all(bn is not None for _, bn in blk.weight_units())
    expected = (2 * cb_params(c_in, hf) + 4 * cb_params(hf, hf, 3) + cb_params(planes, out)
                + (cb_params(c_in, out) if down else 0))
    assert sum(t.numel() for t in blk.parameters()) == expected


def test_scbottleneck_refuses_a_map_smaller_than_pooling_r_at_run_time(tmp_path):
    blk = build(tmp_path, "[scbottleneck]\nplanes=8\npooling_r=4\n", c=32).module_list[0]
    with pytest.raises(ValueError, match="pooling_r=4"):
        blk(torch.randn(1, 32, 3, 8))


# --- errors -------------------------------------------------------------------------------
STEM = "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=2\npad=1\nactivation=relu\n\n"


@pytest.mark.parametrize("body,key,needle", [
    ("[scbottleneck]\nplanes=7\n", "planes", "even"),
    ("[scbottleneck]\nplanes=8\npooling_r=32\n", "pooling_r", "larger than"),  # map 16x16 after STEM
    ("[scbottleneck]\nplanes=8\npooling_r=0\n", "pooling_r", ">= 1"),
    ("[bottleneck]\nplanes=0\n", "planes", ">= 1"),
    ("[bottleneck]\nplanes=4\nstride=0\n", "stride", ">= 1"),
    ("[bottleneck]\nplanes=4\nasymmetric=2\n", "asymmetric", "0 or 1"),
])
def test_bad_sections_name_the_line(tmp_path, body, key, needle):
    text = NET.format(w=32, c=3) + STEM + body
    with pytest.raises(ConfigError) as e:
        build(tmp_path, STEM + body, c=3)
    msg = str(e.value)
    first = len((NET.format(w=32, c=3) + STEM).splitlines())  # the key is in the last section
    line = next(i for i, l in enumerate(text.splitlines(), 1) if i > first and l.startswith(key + "="))
    assert re.search(rf"t\.cfg:{line}: \[\w+\] key '{key}'", msg), msg
    assert needle in msg


def test_missing_planes_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"t\.cfg:\d+: \[bottleneck\].*planes"):
        build(tmp_path, "[bottleneck]\nstride=1\n", c=3)


def test_pooling_r_equal_to_the_map_is_allowed(tmp_path):
    blk = build(tmp_path, STEM + "[scbottleneck]\nplanes=8\npooling_r=16\n", c=3).module_list[1]
    assert blk.out_channels == 32


# --- the -50 cfgs ---------------------------------------------------------------------------
CFGS = ["resnet50-yolov3.cfg", "acresnet50-yolov3.cfg", "scnet50-yolov3.cfg"]
RESNET50_BACKBONE_PARAMS = 23_508_032  # torchvision resnet50 without its fc layer


@pytest.fixture(scope="module")
def models() -> dict[str, Darknet]:
    return {name: Darknet(name) for name in CFGS}


@pytest.mark.parametrize("name", CFGS)
def test_cfg_layout(models, name):
    m = models[name]
    kind = SCBottleneck if name.startswith("scnet") else Bottleneck
    blocks = [b for b in m.module_list if isinstance(b, kind)]
    assert len(blocks) == 16
    assert m.strides == [32, 16, 8]
    assert [b.out_channels for b in m.yolo_layers] == [255, 255, 255]
    stage_ends = {8: (512, 8), 14: (1024, 16), 17: (2048, 32)}  # section: (channels, stride)
    for i, (c, s) in stage_ends.items():
        assert (m.module_list[i].out_channels, m.module_list[i].out_stride) == (c, s)
    assert [i for i, b in enumerate(blocks) if b.downsample is not None] == [0, 3, 7, 13]
    previous = [4.0] + [b.out_stride for b in blocks[:-1]]  # the max-pool output is at stride 4
    assert [i for i, b in enumerate(blocks) if b.out_stride != previous[i]] == [3, 7, 13]
    if name.startswith("acresnet"):
        assert all(isinstance(b.conv2, ACUnit) for b in blocks)


def test_resnet50_backbone_has_the_resnet50_parameter_count(models):
    backbone = models["resnet50-yolov3.cfg"].module_list[:18]
    assert sum(p.numel() for p in backbone.parameters()) == RESNET50_BACKBONE_PARAMS
    ac = models["acresnet50-yolov3.cfg"].module_list[:18]
    extra = sum(2 * (3 * p * p + 2 * p) * n for p, n in zip((64, 128, 256, 512), (3, 4, 6, 3)))
    assert sum(p.numel() for p in ac.parameters()) == RESNET50_BACKBONE_PARAMS + extra


@pytest.mark.parametrize("name", CFGS)
def test_cfg_weights_round_trip_is_byte_identical(models, tmp_path, name):
    a = randomize(models[name], seed=3)
    a.save_darknet_weights(tmp_path / "a.weights")
    b = Darknet(name).load_darknet_weights(tmp_path / "a.weights")
    b.save_darknet_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    assert (tmp_path / "a.weights").stat().st_size == 20 + 4 * a.num_weight_floats()
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("name,size", [("acresnet50-yolov3.cfg", 64), ("scnet50-yolov3.cfg", 128)])
def test_forward_backward_gives_finite_nonzero_gradients(models, name, size):
    m = models[name].train()
    torch.manual_seed(0)
    outs = m(torch.randn(2, 3, size, size))
    assert [tuple(o.shape[2:4]) for o in outs] == [(size // s,) * 2 for s in (32, 16, 8)]
    loss = sum(o.square().sum() for o in outs)
    m.zero_grad(set_to_none=True)
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    m.eval()
