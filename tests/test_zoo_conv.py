"""[convolutional] features of Darknet's zoo: ``xnor=1`` (and ``bin_output=1``), ``share_index=N`` and the
``pad`` / ``padding`` rule, against Darknet's own outputs layer by layer
(``../shared/reference/darknet-golden``: Darknet-written .weights, its input, every layer's output); then
what the golden files do not show: training (straight-through xnor, one shared tensor), fusing, export,
pruning refusals, ``stopbackward``, and resnet152_trident.cfg's float count.

Tolerance: the golden README measured Darknet's float32 within 6.5e-7 of a float64 recomputation in these
cases (values up to 5) and calls atol 1e-5 safe; an xnor layer's inputs are at least 2.5e-5 from 0 there,
so no sign is ambiguous and the chained run may use the same bound. Data movement is bit-exact.
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yolo.blocks.conv import Convolutional, SharedConvolutional, XnorConvBN
from yolo.cfg import ConfigError, UnusedKeyWarning
from yolo.model import Darknet

from helpers import SHARED, build, randomize

GOLDEN = SHARED / "reference" / "darknet-golden"
ZOO = SHARED / "models" / "darknet-cfg" / "zoo"
ATOL = 1e-5
EXACT = {"ROUTE", "MAXPOOL"}
CASES = {"xnor": 8, "share_index": None, "pad_and_padding": None}  # xnor: its [yolo] is tested elsewhere

needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"Darknet golden outputs not found at {GOLDEN}")


def _load(case: str, fuse: bool = False):
    d = np.load(GOLDEN / case / "outputs.npz")
    meta = json.loads(str(d["meta"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedKeyWarning)  # every key of these cfgs is read
        warnings.filterwarnings("ignore", ".*no \\[yolo\\] section")
        model = Darknet(GOLDEN / case / f"{case}.cfg").eval()
    model.load_darknet_weights(GOLDEN / case / f"{case}.weights")
    if fuse:
        model.fuse(channels_last=False)
    return d, meta, model


def _run(block, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
    return block(x, [refs[j] for j in block.inputs]) if block.inputs else block(x)


def _padding(block) -> int:
    """The padding a conv block applies per side, in Darknet's terms (before the dilation factor)."""
    if isinstance(block, SharedConvolutional):
        return block.padding // block.dilation
    if isinstance(block.unit, XnorConvBN):
        return block.unit.pad
    return block.unit.conv.padding[0] // block.unit.conv.dilation[0]


@needs_golden
@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_layers(case: str, fuse: bool) -> None:
    """Chained from Darknet's input and each layer fed Darknet's own inputs: within ATOL (data movement
    bit-exact), unfused (BatchNorm after the kernel) and fused (Darknet's detector-test form); every conv's
    padding and dilation are the ones Darknet used."""
    d, meta, model = _load(case, fuse)
    net = meta["net"]
    x = np.fromfile(GOLDEN / case / "input.f32", dtype="<f4").reshape(net["channels"], net["height"], net["width"])
    x0 = x = torch.from_numpy(x.copy())[None]
    upto = CASES[case] or len(meta["layers"])
    blocks = list(model.module_list)[:upto]
    outs: list[torch.Tensor] = []
    with torch.no_grad():
        for block in blocks:
            x = _run(block, x, outs)
            outs.append(x)
        theirs = [torch.from_numpy(d[f"out_{i}"].copy())[None] for i in range(upto)]
        alone = [_run(b, theirs[i - 1] if i else x0, theirs) for i, b in enumerate(blocks)]
    for layer, block, chained, isolated in zip(meta["layers"], blocks, outs, alone):
        i, kind = layer["index"], layer["type"]
        want = theirs[i]
        assert chained.shape == want.shape, f"{case} layer {i}: shape {tuple(chained.shape)} != {tuple(want.shape)}"
        err = float((chained - want).abs().max())
        assert err <= ATOL, f"{case} layer {i} ({kind}) chained: max abs diff {err:.3g}"
        err = float((isolated - want).abs().max())
        limit = 0.0 if kind in EXACT else ATOL
        assert err <= limit, f"{case} layer {i} ({kind}) alone: max abs diff {err:.3g} > {limit}"
        if kind == "CONVOLUTIONAL":
            assert _padding(block) == layer["padding"], f"{case} layer {i}: padding"
            assert isinstance(block, SharedConvolutional) == (layer["share_index"] >= 0)
            assert isinstance(getattr(block, "unit", None), XnorConvBN) == bool(layer["xnor"])
            if isinstance(block, SharedConvolutional):
                assert block.share_index == layer["share_index"] and block.dilation == layer["dilation"]


@needs_golden
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_weights(case: str, tmp_path) -> None:
    """The float count is what Darknet read, layer by layer (share_index layers: none), and a save writes
    Darknet's file back byte for byte."""
    _, meta, model = _load(case)
    assert model.num_weight_floats() == sum(L["weights_count"] for L in meta["layers"])
    for L in meta["layers"]:
        i = L["index"]
        assert model.num_weight_floats(i + 1) - model.num_weight_floats(i) == L["weights_count"], f"layer {i}"
    out = tmp_path / "again.weights"
    model.save_darknet_weights(out)
    assert out.read_bytes() == (GOLDEN / case / f"{case}.weights").read_bytes()
    if case == "share_index":  # Darknet's partial past the sharers: the same floats (they own none)
        from yolo.partial import partial

        assert partial(GOLDEN / case / f"{case}.cfg", out, tmp_path / "p.weights", 8) == 1456
        assert (tmp_path / "p.weights").read_bytes() == out.read_bytes()


@needs_golden
def test_golden_info_rows() -> None:
    """Darknet's names: convXB (xnor, bin_output), convX, convS; an xnor conv's BFLOPs are Darknet's / 32."""
    from yolo.info import layer_table

    _, meta, model = _load("xnor")
    rows = layer_table(model)
    assert [r.type for r in rows[:8]] == ["conv", "max", "convXB", "max", "convXB", "convX", "convX", "conv"]
    assert rows[5].bflops == pytest.approx(2 * 9 * 32 * 32 * 8 * 8 / 1e9 / 32)
    _, meta, model = _load("share_index")
    rows = layer_table(model)
    assert [rows[i].type for i in (1, 6, 7, 8)] == ["conv", "convS", "convS", "convS"]
    assert rows[7].size.endswith("(2)") and rows[7].bflops == pytest.approx(rows[2].bflops)
    assert [r.params for r in rows[6:9]] == [0, 0, 0]


# --- xnor without the golden files ------------------------------------------------------------------------
XNOR_BODY = """
[convolutional]
xnor=1
bin_output={bin_output}
batch_normalize={bn}
filters=8
size=3
stride={stride}
pad=1
activation=leaky
"""


def _darknet_xnor(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    """Darknet's detector-test rule in float64: mean|w_f| * sum(sign(w) * sign(x)) + b_f, padding -1."""
    sx = F.pad(torch.where(x > 0, 1.0, -1.0).double(), (pad,) * 4, value=-1.0)
    sw = torch.where(w > 0, 1.0, -1.0).double()
    return F.conv2d(sx, sw, None, stride) * w.double().abs().mean((1, 2, 3)).view(1, -1, 1, 1) + b.double().view(
        1, -1, 1, 1)


@pytest.mark.parametrize("bn, stride, bin_output", [(1, 1, 0), (1, 2, 1), (0, 1, 0)])
def test_xnor_is_darknets_rule_unfused_and_fused(tmp_path, bn: int, stride: int, bin_output: int) -> None:
    """Unfused (kernel, then BatchNorm with negative scales too) and fused give Darknet's rule on the fused
    kernel; bin_output=1 is linear at inference and keeps the cfg's activation in training."""
    model = build(tmp_path, XNOR_BODY.format(bn=bn, stride=stride, bin_output=bin_output), c=5, w=16)
    randomize(model, seed=3).eval()
    unit = model.module_list[0].unit
    if unit.bn is not None:
        with torch.no_grad():
            unit.bn.weight[::3] *= -1
    x = torch.randn(2, 5, 16, 16)
    x[0, 0, :2] = 0.0  # exact zeros count as -1
    with torch.no_grad():
        unfused = model(x)
        fused_model = copy.deepcopy(model).fuse(channels_last=False)
        fused = fused_model(x)
        conv = fused_model.module_list[0].unit.conv
        want = _darknet_xnor(x, conv.weight, conv.bias, stride, 1)
    if not bin_output:
        want = F.leaky_relu(want, 0.1)
    torch.testing.assert_close(fused.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(unfused, fused, rtol=0, atol=1e-5)
    model.train()  # training keeps the cfg's activation: bin_output changes nothing there
    with torch.no_grad():
        trained = model(x)
        unit.bin_output = not unit.bin_output
        torch.testing.assert_close(model(x), trained, rtol=0, atol=0)


@pytest.mark.parametrize("reader, keeps", [("[maxpool]\nsize=2\nstride=1", False), ("[route]\nlayers=-1", True),
                                           ("[shortcut]\nfrom=-2", True), ("[avgpool]\n\n[scale_channels]\nfrom=-2",
                                                                          True)])
def test_bin_output_is_dropped_where_values_are_read(tmp_path, reader: str, keeps: bool) -> None:
    """Darknet's parser sets use_bin_output = 0 on the layers a [route], [shortcut] or [scale_channels]
    reads (they need values, not signs): those keep their activation at inference."""
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=leaky\n\n"
            "[convolutional]\nxnor=1\nbin_output=1\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"
            + reader + "\n")
    model = build(tmp_path, body, c=3, w=16)
    assert model.module_list[1].unit.bin_output is not keeps
    from yolo.info import layer_table

    assert layer_table(model)[1].type == ("convX" if keeps else "convXB")


def test_xnor_training_is_straight_through(tmp_path) -> None:
    """The kernel's gradient is the gradient of the binary kernel mean|w_f| * sign(w_f) (Darknet: the binary
    weights' update applied to the real ones); the input's gradient passes where |x| < 1 (HARDTAN)."""
    unit = XnorConvBN(4, 6, 3, 1, 1, False, torch.nn.Identity(), False)
    torch.manual_seed(0)
    with torch.no_grad():
        unit.conv.weight.normal_()
        unit.conv.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(2, 4, 7, 7) * 1.5).requires_grad_()
    g = torch.randn(2, 6, 7, 7)
    (unit(x) * g).sum().backward()
    w = unit.conv.weight.detach()
    binary_w = (torch.where(w > 0, 1.0, -1.0) * w.abs().mean((1, 2, 3)).view(-1, 1, 1, 1)).requires_grad_()
    signs = torch.where(x.detach() > 0, 1.0, -1.0).requires_grad_()
    ref = F.conv2d(F.pad(signs, (1,) * 4, value=-1.0), binary_w, unit.conv.bias.detach())
    (ref * g).sum().backward()
    torch.testing.assert_close(unit.conv.weight.grad, binary_w.grad)
    torch.testing.assert_close(x.grad, signs.grad * (x.detach().abs() < 1))
    with torch.no_grad():
        torch.testing.assert_close(unit(x), ref)


def test_xnor_keys_and_refusals(tmp_path) -> None:
    """groups are ignored as Darknet does (the stream holds c * n * k * k), dilation is refused, pruning
    is refused naming the section."""
    from yolo.prune import prune_model

    model = build(tmp_path, "[convolutional]\nxnor=1\ngroups=2\nfilters=8\nsize=3\npad=1\nbatch_normalize=1\n", c=4)
    assert model.num_weight_floats() == 4 * 8 + 8 * 4 * 9
    with pytest.raises(ConfigError, match=r"t\.cfg:\d+: \[convolutional\] key 'xnor'.*dilation=2"):
        build(tmp_path, "[convolutional]\nxnor=1\ndilation=2\nfilters=8\nsize=3\npad=1\n")
    with pytest.raises(ValueError, match=r"t\.cfg:\d+: \[convolutional\]: an xnor=1 convolution cannot be pruned"):
        prune_model(model, ratio=0.3)


XNOR_DETECTOR = """
[convolutional]
xnor=1
bin_output=1
batch_normalize=1
filters=8
size=3
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
xnor=1
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
pad=1
activation=leaky

[convolutional]
share_index=-1
batch_normalize=1
filters=8
size=3
dilation=2
pad=1
activation=leaky

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=1
num=3
"""


def test_onnx_export_of_xnor_and_share_index(tmp_path) -> None:
    """The export (checked against PyTorch inside, 1e-4) expresses the signs (0 -> -1), the -1 padding and a
    shared kernel; a share_index must name a plain [convolutional]."""
    pytest.importorskip("onnxruntime")
    from yolo.export import export_onnx

    with pytest.raises(ConfigError, match="share_index with xnor=1 is not supported"):
        build(tmp_path, XNOR_DETECTOR.replace("share_index=-1", "share_index=-1\nxnor=1"), c=3)
    for index, what in ((1, "maxpool"), (2, "convolutional")):
        with pytest.raises(ConfigError, match=rf"share_index={index} refers to .*\[{what}\], not a plain"):
            build(tmp_path, XNOR_DETECTOR.replace("share_index=-1", f"share_index={index}"), c=3)
    model = randomize(build(tmp_path, XNOR_DETECTOR, c=3), 1).eval()
    assert isinstance(model.module_list[4], SharedConvolutional)
    path = export_onnx(model, tmp_path / "x.onnx", 32)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Pad" in ops and "Greater" in ops


# --- share_index without the golden files -----------------------------------------------------------------
SHARE_BODY = """
[convolutional]
batch_normalize=1
filters=6
size=3
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=6
size=3
pad=1
activation=leaky

[convolutional]
share_index=1
dilation=2
batch_normalize=1
filters=6
size=3
pad=1
stride=2
activation=linear
"""


def test_share_index_is_one_tensor(tmp_path) -> None:
    """The sharer owns nothing (parameters, state_dict, .weights); training moves the one tensor once, with
    the gradient of both uses; its BN statistics are updated by both; a deep copy and fuse() keep it right."""
    model = randomize(build(tmp_path, SHARE_BODY, c=3, w=16), 2)
    src, sharer = model.module_list[1], model.module_list[2]
    assert isinstance(sharer, SharedConvolutional) and sharer.source is src
    assert list(sharer.parameters()) == [] and not any(k.startswith("module_list.2.") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 2 * 6 + 6 * 27 + 2 * 6 + 6 * 54
    assert model.num_weight_floats() == 4 * 6 + 6 * 27 + 4 * 6 + 6 * 54
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model.eval()
        a = model.module_list[0](x)
        b = src(a)
        unit = src.unit
        want = unit.bn(F.conv2d(b, unit.conv.weight, None, 2, 2, 2))
        torch.testing.assert_close(sharer(b), want)
        fused = copy.deepcopy(model).fuse(channels_last=False)
        assert fused.module_list[2].source is fused.module_list[1]
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
    # training: the gradient is the sum over both uses (a model with two separate copies as reference)
    twin = build(tmp_path, SHARE_BODY.replace("share_index=1\n", ""), c=3, w=16, name="twin.cfg")
    twin.load_state_dict(model.state_dict(), strict=False)
    twin.module_list[2].unit.load_state_dict(unit.state_dict())
    model.train(), twin.train()
    before = unit.bn.num_batches_tracked.item()
    g = torch.randn(2, 6, 8, 8)
    (model(x) * g).sum().backward()
    (twin(x) * g).sum().backward()
    assert unit.bn.num_batches_tracked.item() == before + 2  # both uses update the one BN
    t1, t2 = twin.module_list[1].unit, twin.module_list[2].unit
    for mine, a, b in ((unit.conv.weight, t1.conv.weight, t2.conv.weight), (unit.bn.weight, t1.bn.weight,
                                                                             t2.bn.weight)):
        torch.testing.assert_close(mine.grad, a.grad + b.grad)
    grad, weight = unit.conv.weight.grad.clone(), unit.conv.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # one tensor in the optimiser, moved once
    torch.testing.assert_close(unit.conv.weight.detach(), weight - 0.1 * grad)


def test_share_index_errors(tmp_path) -> None:
    """A mismatch with the source, a reference outside the layers built so far, pruning: one line each."""
    from yolo.prune import prune_model

    with pytest.raises(ConfigError, match=r"t\.cfg:\d+: \[convolutional\] key 'share_index'.*filters 4 vs 6"):
        build(tmp_path, SHARE_BODY.replace("filters=6\nsize=3\npad=1\nstride=2", "filters=4\nsize=3\npad=1\nstride=2"))
    with pytest.raises(ConfigError, match=r"key 'share_index'.*batch_normalize False vs True"):
        build(tmp_path, SHARE_BODY.replace("share_index=1\ndilation=2\nbatch_normalize=1",
                                           "share_index=1\ndilation=2\nbatch_normalize=0"))
    with pytest.raises(ConfigError, match=r"key 'share_index'.*refers to layer 5"):
        build(tmp_path, SHARE_BODY.replace("share_index=1", "share_index=5"))
    model = build(tmp_path, SHARE_BODY, c=3)
    with pytest.raises(ValueError, match=r"t\.cfg:\d+: \[convolutional\]: a share_index convolution cannot be"):
        prune_model(model, ratio=0.3)


@pytest.mark.skipif(not (ZOO / "resnet152_trident.cfg").is_file(), reason=f"Darknet zoo cfgs not found at {ZOO}")
def test_resnet152_trident_reads_what_darknet_reads() -> None:
    """The TridentNet cfg builds (meta device) with every [convolutional] key read, and its stream is what
    Darknet's load_weights reads: the convolutions without share_index, (4 or 1) * filters + kernel each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.device("meta"):
            model = Darknet(ZOO / "resnet152_trident.cfg")
    unused = [str(w.message) for w in caught if issubclass(w.category, UnusedKeyWarning)]
    assert not [m for m in unused if "[convolutional]" in m], unused
    expected = 0
    c_in = model.net.channels
    for section, block in zip(model.sections, model.module_list):
        if section.type == "convolutional" and "share_index" not in section.options:
            n, k = int(section.options["filters"]), int(section.options["size"])
            bn = section.options.get("batch_normalize", "0") == "1"
            groups = int(section.options.get("groups", "1"))
            expected += (4 if bn else 1) * n + n * (c_in // groups) * k * k
        c_in = block.out_channels
    shared = sum(isinstance(b, SharedConvolutional) for b in model.module_list)
    assert shared == 54 and model.num_weight_floats() == expected == 65_579_016


# --- pad / padding and stopbackward -----------------------------------------------------------------------
@pytest.mark.parametrize("keys, size, padding", [("pad=1\npadding=0", 3, 1), ("pad=1\npadding=3", 3, 1),
                                                 ("padding=2", 3, 2), ("pad=1", 5, 2), ("pad=1", 1, 0), ("", 3, 0)])
def test_pad_wins_over_padding(tmp_path, keys: str, size: int, padding: int) -> None:
    """Darknet's parse_convolutional: ``if (pad) padding = size/2``; both keys are read (no warning)."""
    path = tmp_path / "p.cfg"
    path.write_text(f"[net]\nwidth=16\nheight=16\nchannels=3\n\n[convolutional]\nfilters=2\nsize={size}\n{keys}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedKeyWarning)
        warnings.filterwarnings("ignore", ".*no \\[yolo\\] section")
        model = Darknet(path)
    assert model.module_list[0].unit.conv.padding == (padding, padding)
    assert model.output_shapes(16, 16)[0][1] == 16 + 2 * padding - size + 1


def test_stopbackward_is_read_and_kept(tmp_path) -> None:
    """``stopbackward`` is a [convolutional] key (no unused-key warning), kept on every conv form."""
    body = ("[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nstopbackward=800\n\n"
            "[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nasymmetric=1\nstopbackward=1\n\n"
            "[convolutional]\nshare_index=0\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nstopbackward=1\n\n"
            "[convolutional]\nxnor=1\nfilters=4\nsize=3\npad=1\n")
    path = tmp_path / "s.cfg"
    path.write_text("[net]\nwidth=16\nheight=16\nchannels=4\n\n" + body)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedKeyWarning)
        warnings.filterwarnings("ignore", ".*no \\[yolo\\] section")
        model = Darknet(path)
    assert [b.stopbackward for b in model.module_list] == [800, 1, 1, 0]
    assert isinstance(model.module_list[0], Convolutional)
    with pytest.raises(ConfigError, match=r"key 'stopbackward'.*>= 0"):
        build(tmp_path, "[convolutional]\nfilters=4\nsize=1\nstopbackward=-1\n")


@needs_golden
def test_opencv_engine_refuses_share_index() -> None:
    """OpenCV's importer would read weights a sharing layer does not own: the engine refuses, naming the key."""
    from yolo.backends.opencv import opencv_problem
    from yolo.cfg import parse_cfg

    problem = opencv_problem(parse_cfg(GOLDEN / "share_index" / "share_index.cfg"))
    assert problem is not None and "share_index" in problem
