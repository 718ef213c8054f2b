"""Deploy-time fusion: exact, written as an ordinary Darknet cfg + weights, readable by OpenCV."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo import Darknet
from yolo.blocks.acnet import ACConv
from yolo.blocks.conv import Convolutional
from yolo.blocks.layers import ACUnit
from yolo.cfg import parse_cfg, parse_cfg_text
from yolo.deploy import edit_cfg_text
from yolo.deploy import main as deploy_main

from helpers import randomize

ROOT = Path(__file__).resolve().parent.parent


def run(model: Darknet, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(raw inputs of each [yolo] layer, decoded eval output)."""
    raw: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: raw.append(a[0].clone())) for m in model.yolo_layers]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return raw, out


def assert_rel_close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """|got - ref| <= rel * |ref| elementwise, with a floor of rel * max|ref| for values near 0."""
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=rel, atol=rel * float(ref.abs().max()))


def assert_same_outputs(a, b) -> None:
    (raw_a, out_a), (raw_b, out_b) = a, b
    for ra, rb in zip(raw_a, raw_b, strict=True):
        assert_rel_close(ra, rb)
    assert_rel_close(out_a[..., :4], out_b[..., :4])  # boxes, pixels
    assert_rel_close(out_a[..., 4:], out_b[..., 4:])  # probabilities


def quiet_model(cfg: str | Path) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(cfg, warn_unused=False)


# --- cfg text edits -------------------------------------------------------------------------
def test_edit_cfg_text_changes_only_the_named_keys():
    text = ("[net]\nwidth=32 # keep me\n\n# a comment\n[convolutional]\nasymmetric=1\n"
            "batch_normalize=1  # inline\nfilters=4\nasymmetric = 1\n\n[maxpool]\nsize=2\n"
            "[convolutional]\nfilters=2\n")
    out = edit_cfg_text(text, {5: {"asymmetric": None, "batch_normalize": "0"},
                               13: {"batch_normalize": "0"}})
    assert out == ("[net]\nwidth=32 # keep me\n\n# a comment\n[convolutional]\n"
                   "batch_normalize=0\nfilters=4\n\n[maxpool]\nsize=2\n"
                   "[convolutional]\nbatch_normalize=0\nfilters=2\n")
    with pytest.raises(ValueError, match="line"):
        edit_cfg_text(text, {6: {"filters": "1"}})


# --- yolov3-tiny-ac ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ac(tmp_path_factory) -> tuple[Darknet, Path]:
    """A randomised training-time yolov3-tiny-ac and its .weights file."""
    model = randomize(Darknet("yolov3-tiny-ac.cfg"), seed=5).eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny-ac.weights"
    model.save_darknet_weights(path)
    return model, path


def test_tiny_ac_deploy_in_place_is_exact(tiny_ac):
    ref_model, weights = tiny_ac
    x = torch.rand(2, 3, 128, 160)
    ref = run(ref_model, x)
    model = Darknet("yolov3-tiny-ac.cfg").load_darknet_weights(weights)
    assert model.deploy() is model
    assert not any(isinstance(b, ACConv) for b in model.module_list)
    assert sum(isinstance(b, Convolutional) and b.unit.bn is None for b in model.module_list) == 9 + 2
    assert_same_outputs(run(model, x), ref)
    model.deploy()  # a second deploy changes nothing
    assert_same_outputs(run(model.fuse(), x), ref)  # and BN folding of the rest on top


def test_deploy_command_writes_a_plain_model(tiny_ac, tmp_path):
    ref_model, weights = tiny_ac
    out_cfg, out_w = tmp_path / "dep.cfg", tmp_path / "dep.weights"
    proc = subprocess.run([sys.executable, "-m", "yolo.deploy", "--cfg", "cfg/yolov3-tiny-ac.cfg",
                           "--weights", str(weights), "--out-cfg", str(out_cfg), "--out-weights", str(out_w)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "deployed 9 section(s)" in proc.stdout
    # the cfg: no asymmetric key, batch_normalize=0 where it was, every other line as written
    src = (ROOT / "cfg" / "yolov3-tiny-ac.cfg").read_text().splitlines()
    dep = out_cfg.read_text().splitlines()
    assert not any(line.startswith("asymmetric") for line in dep)
    expect = [("batch_normalize=0" if line == "batch_normalize=1" and src[i - 1] == "asymmetric=1" else line)
              for i, line in enumerate(src) if line != "asymmetric=1"]
    assert dep[1:] == expect and dep[0].startswith("# Deployed by yolo.deploy")
    # the same layers as plain yolov3-tiny, weights in its layout (BN only on the 1x1 convs)
    plain = [(s.type, {k: v for k, v in s.options.items() if k != "batch_normalize"})
             for s in parse_cfg("yolov3-tiny.cfg")]
    assert [(s.type, {k: v for k, v in s.options.items() if k != "batch_normalize"})
            for s in parse_cfg(out_cfg)] == plain
    model = Darknet(out_cfg).load_darknet_weights(out_w)
    assert out_w.stat().st_size == 20 + 4 * model.num_weight_floats()
    x = torch.rand(1, 3, 96, 96)
    assert_same_outputs(run(model, x), run(ref_model, x))


def test_deploy_without_ac_sections_copies_the_model(tmp_path):
    model = randomize(Darknet("yolov3-tiny.cfg"), seed=2)
    model.save_darknet_weights(tmp_path / "in.weights")
    rc = deploy_main(["--cfg", "yolov3-tiny.cfg", "--weights", str(tmp_path / "in.weights"),
                      "--out-cfg", str(tmp_path / "o.cfg"), "--out-weights", str(tmp_path / "o.weights")])
    assert rc == 0
    assert (tmp_path / "o.cfg").read_text() == (ROOT / "cfg" / "yolov3-tiny.cfg").read_text()
    assert (tmp_path / "o.weights").read_bytes() == (tmp_path / "in.weights").read_bytes()


def test_deploy_errors(tiny_ac, tmp_path, capsys):
    _, weights = tiny_ac
    rc = deploy_main(["--cfg", "yolov3-tiny.cfg", "--weights", str(weights),
                      "--out-cfg", str(tmp_path / "o.cfg"), "--out-weights", str(tmp_path / "o.weights")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "tiny-ac.weights" in err and "floats" in err  # wrong cfg for these weights
    with pytest.raises(RuntimeError, match="before fuse"):
        Darknet("yolov3-tiny-ac.cfg").fuse().deploy()


def test_opencv_reads_the_deployed_model(tiny_ac, tmp_path):
    cv2 = pytest.importorskip("cv2")
    ref_model, weights = tiny_ac
    out_cfg, out_w = tmp_path / "dep.cfg", tmp_path / "dep.weights"
    assert deploy_main(["--cfg", "yolov3-tiny-ac.cfg", "--weights", str(weights),
                        "--out-cfg", str(out_cfg), "--out-weights", str(out_w)]) == 0
    # OpenCV zeroes class scores below the [yolo] thresh: a copy with thresh=0 keeps them all
    cv_cfg = tmp_path / "dep-cv.cfg"
    cv_cfg.write_text(out_cfg.read_text().replace("[yolo]\n", "[yolo]\nthresh=0\n"))
    net = cv2.dnn.readNetFromDarknet(str(cv_cfg), str(out_w))
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    size = 416
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    net.setInput(x.numpy())
    cv_outs = net.forward(net.getUnconnectedOutLayersNames())
    _, ours = run(ref_model, x)  # the training-time model
    ours = ours[0]
    rows, start = [], 0
    for layer in ref_model.yolo_layers:  # ours: (anchor, row, col) per layer; OpenCV: (row, col, anchor)
        ny = nx = int(size // layer.out_stride)
        na, nc = layer.num_anchors, layer.num_attrib
        o = ours[start:start + na * ny * nx]
        rows.append(o.reshape(na, ny, nx, nc).permute(1, 2, 0, 3).reshape(-1, nc))
        start += na * ny * nx
    assert start == ours.shape[0]
    cv = torch.from_numpy(np.concatenate(cv_outs, 0))
    theirs = torch.cat(rows, 0)
    assert cv.shape == theirs.shape == (3 * (13 * 13 + 26 * 26), 85)
    assert_rel_close(cv[:, :4] * size, theirs[:, :4])  # OpenCV boxes are fractions of the input
    assert_rel_close(cv[:, 4], theirs[:, 4])
    assert_rel_close(cv[:, 5:], theirs[:, 5:] * theirs[:, 4:5])  # OpenCV: objectness x class prob


# --- ACNet ResNet-50 --------------------------------------------------------------------------
def test_acresnet50_deploy_is_exact_and_becomes_resnet50(tmp_path):
    model = randomize(Darknet("acresnet50-yolov3.cfg"), seed=7).eval()
    x = torch.rand(1, 3, 128, 128)
    ref = run(model, x)
    model.deploy()
    assert_same_outputs(run(model, x), ref)
    # written form: a plain [bottleneck] cfg (asymmetric dropped), BN kept as identity on conv2
    units = [b.conv2 for b in model.module_list if hasattr(b, "conv2")]
    assert len(units) == 16 and not any(isinstance(u, ACUnit) for u in units)
    bn = units[0].bn
    assert torch.all(bn.weight == 1) and torch.all(bn.running_mean == 0)
    torch.testing.assert_close(bn.running_var + bn.eps, torch.ones_like(bn.running_var))

    def layout(sections):
        return [(s.type, s.options) for s in sections]

    assert layout(parse_cfg_text(model.cfg_text)) == layout(parse_cfg("resnet50-yolov3.cfg"))
    model.save_darknet_weights(tmp_path / "dep.weights")
    plain = quiet_model(ROOT / "cfg" / "resnet50-yolov3.cfg").load_darknet_weights(tmp_path / "dep.weights")
    assert_same_outputs(run(plain, x), ref)
    assert_same_outputs(run(model.fuse(), x), ref)


def test_deploy_leaves_every_module_in_eval_mode():
    model = Darknet("acresnet50-yolov3.cfg").train()
    model.deploy()
    assert not [name for name, m in model.named_modules() if m.training]
