"""Darknet forward semantics: output contract, decoding formulas, routing, fusion, fast path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from yolo import Darknet
from yolo.blocks.routing import MaxPool

from helpers import TINY


def tiny(seed: int = 0) -> Darknet:
    """The fixture network with random weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    model = Darknet(TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def test_batchnorm_eps_is_darknets():
    bns = [m for m in Darknet("yolov3-tiny.cfg").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 for m in bns)


def decode_by_formula(raw: torch.Tensor, layer) -> torch.Tensor:
    """blocks.md's [yolo] decoding, written out per element: (b, na, ny, nx, 5+C) -> same."""
    b, na, ny, nx, _ = raw.shape
    s = layer.scale_x_y
    gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
    out = torch.empty_like(raw)
    for a in range(na):
        t = raw[:, a]
        aw, ah = layer.anchors[a]
        if layer.new_coords:
            out[:, a, ..., 0] = (t[..., 0] * s - (s - 1) / 2 + gx) * layer.out_stride
            out[:, a, ..., 1] = (t[..., 1] * s - (s - 1) / 2 + gy) * layer.out_stride
            out[:, a, ..., 2] = (2 * t[..., 2]) ** 2 * aw
            out[:, a, ..., 3] = (2 * t[..., 3]) ** 2 * ah
            out[:, a, ..., 4:] = t[..., 4:]
        else:
            out[:, a, ..., 0] = (torch.sigmoid(t[..., 0]) * s - (s - 1) / 2 + gx) * layer.out_stride
            out[:, a, ..., 1] = (torch.sigmoid(t[..., 1]) * s - (s - 1) / 2 + gy) * layer.out_stride
            out[:, a, ..., 2] = torch.exp(t[..., 2]) * aw
            out[:, a, ..., 3] = torch.exp(t[..., 3]) * ah
            out[:, a, ..., 4:] = torch.sigmoid(t[..., 4:])
    return out


def test_eval_output_is_decoded_training_output_in_contract_order():
    """Rows by [yolo] layer, anchor (mask order), grid row, grid column; non-square input."""
    model = tiny()
    h, w = 64, 96
    x = torch.rand(2, 3, h, w)
    inputs = []  # each [yolo]'s input: Darknet's channel layout is anchor * (5 + C) + attribute
    hooks = [layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for layer in model.yolo_layers]
    with torch.no_grad():
        out = model(x)
    for hook in hooks:
        hook.remove()
    raw = [t.view(2, layer.num_anchors, 7, *t.shape[2:]).permute(0, 1, 3, 4, 2)
           for t, layer in zip(inputs, model.yolo_layers)]
    with torch.no_grad():
        train_raw = model.train()(x)  # training mode: the raw maps, same layout
    model.eval()
    first, second = model.yolo_layers
    assert (first.scale_x_y, first.new_coords, second.scale_x_y, second.new_coords) == (1.05, False, 2.0, True)
    assert [tuple(r.shape) for r in train_raw] == [(2, 3, h // 8, w // 8, 7), (2, 2, h // 4, w // 4, 7)]
    expected = torch.cat([decode_by_formula(r, layer).reshape(2, -1, 7)
                          for r, layer in zip(raw, model.yolo_layers)], 1)
    assert out.shape == (2, 3 * 8 * 12 + 2 * 16 * 24, 7)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    # anchors in mask order: mask=3,4,5 of the 6 pairs
    assert first.anchors.tolist() == [[20, 22], [30, 28], [40, 50]]


def test_route_groups_take_a_slice_of_each_input():
    model = tiny()
    x = torch.randn(1, 16, 4, 4)
    route = model.module_list[3]
    assert route.out_channels == 8
    assert torch.equal(route(x, [x]), x[:, 8:])


def test_shortcut_with_fewer_channels_adds_the_overlap():
    model = tiny()
    block = model.module_list[5]  # 16 channels + 8 from layer 3
    x, r = torch.randn(1, 16, 4, 4), torch.randn(1, 8, 4, 4)
    assert torch.equal(block(x, [r]), torch.cat([x[:, :8] + r, x[:, 8:]], 1))


def test_dilated_and_grouped_convolutions():
    model = tiny()
    dilated, grouped = model.module_list[4].unit, model.module_list[6].unit
    assert dilated.conv.dilation == (2, 2) and dilated.conv.padding == (2, 2)
    assert grouped.conv.groups == 2 and grouped.conv.weight.shape == (16, 8, 3, 3)
    x = torch.randn(1, 8, 6, 6)
    bn = dilated.bn
    with torch.no_grad():
        y = F.conv2d(x, dilated.conv.weight, None, 1, 2, 2)
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5)
        torch.testing.assert_close(dilated(x), F.silu(y))  # activation=swish


@pytest.mark.parametrize("size,stride,padding", [(2, 2, 1), (2, 1, 1), (3, 1, 2), (3, 2, 2), (5, 1, 4), (3, 2, 1)])
def test_maxpool_follows_darknet(size, stride, padding):
    """Darknet: window i covers [i*stride - padding//2, ... + size), out = (n + padding - size)//stride + 1."""
    block = MaxPool(2, size, stride, padding, 1.0)
    for h, w in ((13, 13), (8, 11)):
        x = torch.randn(1, 2, h, w)
        oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
        lo = padding // 2
        expected = torch.empty(1, 2, oh, ow)
        for i in range(oh):
            for j in range(ow):
                r0, c0 = max(0, i * stride - lo), max(0, j * stride - lo)
                r1, c1 = min(h, i * stride - lo + size), min(w, j * stride - lo + size)
                expected[..., i, j] = x[..., r0:r1, c0:c1].amax((-2, -1))
        assert torch.equal(block(x), expected)


def test_fuse_keeps_outputs_and_refuses_to_save(tmp_path):
    model = tiny()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        model.fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-4)
    with pytest.raises(RuntimeError, match="fused"):
        model.save_darknet_weights(tmp_path / "x.weights")
    assert not (tmp_path / "x.weights").exists()


def test_optimized_model_keeps_the_eval_contract():
    model = tiny()
    fast = tiny().optimize_for_inference()
    with torch.no_grad():
        for shape in ((1, 3, 64, 64), (2, 3, 32, 96), (1, 3, 64, 64)):
            x = torch.rand(*shape)
            torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-4)
    with torch.inference_mode():
        x = torch.rand(1, 3, 96, 32)
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of the network's stride 8"):
        fast(torch.rand(1, 3, 60, 64))


def test_float64_forward_agrees_with_float32():
    model = tiny()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        single = model(x)
        double = model.double()(x.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(single.double(), double, rtol=0, atol=5e-5)


def test_bad_input_sizes_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match=r"each side must be a multiple of the network's stride 8"):
        model(torch.rand(1, 3, 64, 60))
    with pytest.raises(ValueError, match=r"expected input \(batch, 3, height, width\)"):
        model(torch.rand(1, 4, 64, 64))


def test_a_block_that_forgets_a_weight_unit_fails_at_build_naming_its_section(tmp_path):
    from yolo.blocks.layers import ConvBN
    from yolo.registry import Block, register

    @register("forgetful_test_block")
    class Forgetful(Block):
        def __init__(self, c: int, stride: float) -> None:
            super().__init__(c, stride)
            self.a, self.b = ConvBN(c, c, 3), ConvBN(c, c, 1)

        @classmethod
        def from_section(cls, s, ctx):
            return cls(ctx.c_in, ctx.stride_in)

        def forward(self, x):
            return self.b(self.a(x))

        def weight_units(self):
            yield from self.a.weight_units()  # b forgotten

    cfg = tmp_path / "f.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n\n[forgetful_test_block]\n")
    with pytest.raises(RuntimeError) as e:
        Darknet(cfg)
    msg = str(e.value)
    assert f"{cfg}:6" in msg and "b.conv" in msg and "b.bn" in msg and "weight_units" in msg
