"""ACNet: asymmetric=1 on a [convolutional] — shapes, formula, stream order, fusion, errors."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yolo import ConfigError, Darknet
from yolo.blocks.acnet import ACConv
from yolo.blocks.conv import Convolutional
from yolo.blocks.layers import ACUnit, add_asymmetric

from helpers import NET, build, randomize


def ac_section(filters: int = 6, size: int = 3, stride: int = 1, groups: int = 1,
               extra: str = "") -> str:
    return (f"[convolutional]\nasymmetric=1\nbatch_normalize=1\nfilters={filters}\nsize={size}\n"
            f"stride={stride}\npad=1\ngroups={groups}\nactivation=leaky\n{extra}")


def bn_eval(z: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5)


CASES = [(3, 1, 1), (3, 2, 2), (5, 1, 1), (5, 2, 3)]  # (size, stride, groups)


@pytest.mark.parametrize("size,stride,groups", CASES)
def test_acconv_forward_is_the_three_branch_formula(tmp_path, size, stride, groups):
    c_in, c_out = 6, 12
    model = randomize(build(tmp_path, ac_section(c_out, size, stride, groups), c=c_in)).eval()
    block = model.module_list[0]
    assert isinstance(block, ACConv)
    assert block.out_channels == c_out and block.out_stride == stride
    u = block.unit
    x = torch.randn(2, c_in, 17, 15)  # odd sizes: padding alignment of the branches matters
    p = size // 2
    ys = bn_eval(F.conv2d(x, u.square.conv.weight, None, stride, p, 1, groups), u.square.bn)
    yh = bn_eval(F.conv2d(x, u.hor.conv.weight, None, stride, (0, p), 1, groups), u.hor.bn)
    yv = bn_eval(F.conv2d(x, u.ver.conv.weight, None, stride, (p, 0), 1, groups), u.ver.bn)
    expected = F.leaky_relu(ys + yh + yv, 0.1)
    with torch.no_grad():
        got = block(x)
    assert got.shape == (2, c_out, (17 - 1) // stride + 1, (15 - 1) // stride + 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,stride,groups", CASES)
def test_acconv_parameters_and_stream_order(tmp_path, size, stride, groups):
    c_in, c_out = 6, 12
    model = build(tmp_path, ac_section(c_out, size, stride, groups), c=c_in)
    per = c_in // groups * c_out
    expected_params = per * size * size + 2 * c_out + 2 * (per * size + 2 * c_out)
    assert sum(p.numel() for p in model.parameters()) == expected_params
    assert model.num_weight_floats() == expected_params + 3 * 2 * c_out  # + running mean/var
    units = list(model.module_list[0].weight_units())
    assert [tuple(c.weight.shape[2:]) for c, _ in units] == [(size, size), (1, size), (size, 1)]
    assert all(bn is not None for _, bn in units)


def test_add_asymmetric_puts_kernels_on_centre_row_and_column():
    sq = torch.zeros(1, 1, 3, 3)
    hor = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
    ver = torch.tensor([10.0, 20.0, 30.0]).view(1, 1, 3, 1)
    k = add_asymmetric(sq, hor, ver)[0, 0]
    assert k.tolist() == [[0, 10, 0], [1, 22, 3], [0, 30, 0]]
    assert sq.abs().sum() == 0  # input untouched


@pytest.mark.parametrize("size,stride,groups", CASES)
def test_acunit_fusion_is_exact(size, stride, groups):
    torch.manual_seed(0)
    unit = randomize(ACUnit(6, 12, size, stride, groups, nn.LeakyReLU(0.1))).eval()
    x = torch.randn(2, 6, 19, 16)
    with torch.no_grad():
        ref = unit(x)
        plain = unit.deployed_unit(keep_bn=False)
        with_bn = unit.deployed_unit(keep_bn=True).eval()
        assert plain.bn is None and plain.conv.bias is not None and with_bn.bn is not None
        torch.testing.assert_close(plain(x), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(with_bn(x), ref, rtol=1e-4, atol=1e-5)
        unit.fuse_bn()
        assert unit.square is None and isinstance(unit.fused, nn.Conv2d)
        torch.testing.assert_close(unit(x), ref, rtol=1e-4, atol=1e-5)


def test_model_fuse_merges_the_branches(tmp_path):
    model = randomize(build(tmp_path, ac_section() + "\n" + ac_section(8))).eval()
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        ref = model.module_list[1](model.module_list[0](x))
        model.fuse()
        out = model.module_list[1](model.module_list[0](x))
    assert all(b.unit.fused is not None for b in model.module_list)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_asymmetric_zero_is_a_plain_convolution(tmp_path):
    body = ac_section().replace("asymmetric=1", "asymmetric=0")
    assert isinstance(build(tmp_path, body).module_list[0], Convolutional)


@pytest.mark.parametrize("change,needle", [
    (("size=3", "size=1"), "odd kernel size"),
    (("size=3", "size=4"), "odd kernel size"),
    (("batch_normalize=1", "batch_normalize=0"), "batch_normalize=1"),
    (("pad=1", "pad=0"), "padding"),
    (("groups=1", "groups=4"), "groups"),
])
def test_bad_asymmetric_sections_name_the_line(tmp_path, change, needle):
    body = "[maxpool]\nsize=1\nstride=1\n\n" + ac_section(filters=6).replace(*change)
    if change[0] == "batch_normalize=1":
        body = body.replace("batch_normalize=0\n", "")  # absent key: same error
    text = NET.format(w=32, c=4) + body
    with pytest.raises(ConfigError) as e:
        build(tmp_path, body)
    msg = str(e.value)
    assert needle in msg and "[convolutional]" in msg and "t.cfg:" in msg
    key = "groups" if needle == "groups" else "asymmetric"
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith(key + "="))
    assert re.search(rf"t\.cfg:{line}:", msg), msg


def test_tiny_ac_cfg_is_yolov3_tiny_with_ac_3x3(tmp_path):
    ac = Darknet("yolov3-tiny-ac.cfg")
    plain = Darknet("yolov3-tiny.cfg")
    assert len(ac.module_list) == len(plain.module_list)
    n_ac = 0
    for a, p in zip(ac.module_list, plain.module_list):
        assert (a.out_channels, a.out_stride) == (p.out_channels, p.out_stride)
        if isinstance(p, Convolutional) and p.unit.conv.kernel_size == (3, 3):
            assert isinstance(a, ACConv)
            n_ac += 1
        else:
            assert type(a) is type(p)
    assert n_ac == 9
    assert ac.strides == [32, 16]
    x = torch.randn(1, 3, 64, 64)
    ac.eval()
    with torch.no_grad():
        assert ac(x).shape == (1, 3 * (2 * 2 + 4 * 4), 85)


def test_tiny_ac_weights_round_trip_is_byte_identical(tmp_path):
    a = randomize(Darknet("yolov3-tiny-ac.cfg"), seed=1)
    a.save_darknet_weights(tmp_path / "a.weights")
    b = Darknet("yolov3-tiny-ac.cfg").load_darknet_weights(tmp_path / "a.weights")
    b.save_darknet_weights(tmp_path / "b.weights")
    data = (tmp_path / "a.weights").read_bytes()
    assert data == (tmp_path / "b.weights").read_bytes()
    assert len(data) == 20 + 4 * a.num_weight_floats()
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith("num_batches_tracked"))
