"""yolo.info: Darknet's layer table and Total BFLOPS, figure for figure."""
from __future__ import annotations

import re
import warnings

import pytest
import torch

from yolo import Darknet
from yolo.info import layer_table, main, total_bflops, weights_file_bytes

from helpers import ROOT, build


def _model(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(path, warn_unused=False)


def _norm(text: str) -> str:
    """Darknet's row with its column padding removed: 'conv 16 3x3/1 416x416x3 -> ...'."""
    text = re.sub(r"\s*x\s*", "x", text)
    text = re.sub(r"\s*/\s*", "/", text)
    return " ".join(text.split())


# Total BFLOPS as Darknet printed it (../shared/reference/darknet.md), for the cfgs in
# ../shared/models; cfg/ holds byte-identical copies (checked below), so these run without it.
DARKNET_TOTALS = [
    ("darknet-cfg/yolov3.cfg", 608, 140.723),
    ("darknet-cfg/yolov3-tiny.cfg", 416, 5.571),
    ("darknet-cfg/yolov4-tiny.cfg", 416, 6.910),
    ("yolo-fastest-1.1/yolo-fastest-1.1.cfg", 320, 0.252),
]
IDS = [c[0].split("/")[-1] for c in DARKNET_TOTALS]


@pytest.mark.parametrize("cfg,size,expected", DARKNET_TOTALS, ids=IDS)
def test_total_bflops_matches_darknet(cfg, size, expected):
    model = _model(ROOT / "cfg" / cfg.split("/")[-1])
    total = total_bflops(model, size)
    assert abs(total - expected) < 0.001, f"{cfg} @{size}: {total:.4f} vs Darknet {expected}"


@pytest.mark.parametrize("cfg", [c[0] for c in DARKNET_TOTALS], ids=IDS)
def test_repo_cfgs_are_the_ones_darknet_measured(shared, cfg):
    assert (ROOT / "cfg" / cfg.split("/")[-1]).read_bytes() == (shared / "models" / cfg).read_bytes()


def test_yolov3_tiny_rows_match_darknet():
    rows = layer_table(_model(ROOT / "cfg" / "yolov3-tiny.cfg"), (416, 416))
    assert len(rows) == 24
    assert _norm(rows[0].text) == "0 conv 16 3x3/1 416x416x3 -> 416x416x16 0.150 BF"
    assert _norm(rows[12].text) == "12 conv 1024 3x3/1 13x13x512 -> 13x13x1024 1.595 BF"
    # Darknet counts max-pool compares: size*size*C*out_h*out_w (0.003 BF for layer 1)
    assert rows[1].type == "max" and rows[1].output == (208, 208, 16)
    assert rows[1].bflops == pytest.approx(2 * 2 * 16 * 208 * 208 / 1e9)
    assert rows[17].type == "route" and rows[17].output == (13, 13, 256)
    assert rows[19].type == "upsample" and rows[19].output == (26, 26, 128)
    assert rows[20].output == (26, 26, 384)
    assert rows[23].type == "yolo" and rows[23].output == (26, 26, 255)
    assert all(r.bflops == 0 for r in rows if r.type in ("route", "upsample", "yolo"))


def test_other_input_size_scales_and_rectangular(tmp_path):
    model = _model(ROOT / "cfg" / "yolov3-tiny.cfg")
    square = total_bflops(model, 416)
    rect = layer_table(model, (608, 320))
    assert rect[0].input == (608, 320, 3)  # W x H x C, as Darknet prints
    assert rect[15].output == (19, 10, 255)
    assert total_bflops(rect) == pytest.approx(square * 608 * 320 / 416 ** 2, rel=0.01)


def test_hand_computed_layers(tmp_path):
    """Groups, dilation, stride, shortcut of 2 layers, route groups: Darknet's formulas by hand."""
    model = build(tmp_path, """
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=8
size=3
groups=8
pad=1
activation=leaky
[convolutional]
filters=8
size=3
dilation=2
pad=1
activation=leaky
[shortcut]
from=-2,-3
[route]
layers=-1
groups=2
group_id=1
[maxpool]
size=3
stride=1
""", c=4, w=32)
    rows = layer_table(model)
    assert [r.type for r in rows] == ["conv", "conv", "conv", "shortcut", "route", "max"]
    assert rows[0].output == (16, 16, 8)
    assert rows[0].bflops == pytest.approx(2 * 4 * 8 * 9 * 16 * 16 / 1e9)
    assert rows[1].bflops == pytest.approx(2 * 1 * 8 * 9 * 16 * 16 / 1e9)  # depthwise: C_in/groups = 1
    assert _norm(rows[1].text).startswith("1 conv 8/8 3x3/1 ")
    assert rows[2].output == (16, 16, 8) and "(2)" in rows[2].size
    assert rows[3].bflops == pytest.approx(16 * 16 * 8 * 2 / 1e9)  # n = 2 'from' layers
    assert rows[4].output == (16, 16, 4) and rows[4].bflops == 0
    assert rows[5].output == (16, 16, 4)
    assert rows[5].bflops == pytest.approx(3 * 3 * 4 * 16 * 16 / 1e9)
    assert total_bflops(rows) == pytest.approx(sum(r.bflops for r in rows))


def test_acnet_and_composites_sum_their_convolutions():
    ac = layer_table(_model(ROOT / "cfg" / "yolov3-tiny-ac.cfg"), 416)
    plain = layer_table(_model(ROOT / "cfg" / "yolov3-tiny.cfg"), 416)
    assert ac[0].type == "conv-ac"
    # square 3x3 + 1x3 + 3x1 branches = 5/3 of the plain 3x3's figure
    assert ac[0].bflops == pytest.approx(plain[0].bflops * 5 / 3)
    assert len(ac[0].convs) == 3
    rows = layer_table(_model(ROOT / "cfg" / "resnet50-yolov3.cfg"), 416)
    first = next(r for r in rows if r.type == "bottleneck")
    assert first.bflops == pytest.approx(sum(b for _, b in first.convs)) and first.bflops > 0
    assert len(first.convs) == 4  # conv1, conv2, conv3, downsample


def test_table_leaves_the_model_untouched():
    model = _model(ROOT / "cfg" / "yolov3-tiny.cfg").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_table(model, 320)
    assert model.training
    with torch.no_grad():  # nothing cached on the meta device during the shape run
        assert torch.equal(model.eval()(x), expected)
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
    assert weights_file_bytes(model) == 20 + 4 * model.num_weight_floats()


@pytest.mark.parametrize("cfg", sorted(p.name for p in (ROOT / "cfg").glob("*.cfg")))
def test_every_shipped_cfg_prints_a_table(cfg, capsys):
    assert main([str(ROOT / "cfg" / cfg)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Total BFLOPS \d+\.\d{3} ", out, re.M)
    assert ".weights:" in out and "parameters:" in out
    model_rows = [l for l in out.splitlines() if re.match(r"\s*\d+ \S", l)]
    assert len(model_rows) >= 20 and all(l.rstrip().endswith("BF") for l in model_rows)


def test_cli_errors_are_one_line(capsys):
    assert main([str(ROOT / "cfg" / "yolov3-tiny.cfg"), "--img-size", "400"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "multiple" in err and len(err.strip().splitlines()) == 1
    assert main([str(ROOT / "cfg" / "missing.cfg")]) == 2
