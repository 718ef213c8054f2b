"""ONNX export of the zoo sections ([reorg], [reorg3d], [avgpool], [local_avgpool], [softmax], [cost], [batchnorm],
[crop], [contrastive], [connected], [local], [sam], [scale_channels], [dropout], the strided [shortcut]) and heads
([region], [Gaussian_yolo], [detection]): each exports, and onnxruntime runs the graph as PyTorch runs the model
(compared here against the model itself, not against export's own check), or the export is refused naming the
section and its cfg line.

Small nets: Darknet's golden cases (64x64, ../shared/reference/darknet-golden/*/), a 1x1 conv + [yolo] appended to
those without a head (only detectors export), and a few cfgs written here.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo.export import ExportError, export_onnx
from yolo.model import Darknet

from helpers import SHARED

ort = pytest.importorskip("onnxruntime")

GOLDEN = SHARED / "reference" / "darknet-golden"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"Darknet golden outputs not found at {GOLDEN}")
HEAD = "\n[convolutional]\nsize=1\nfilters=7\nactivation=linear\n\n[yolo]\nmask=0\nanchors=10,14\nclasses=2\nnum=1\n"
HEADS = re.compile(r"^\[(yolo|region|Gaussian_yolo|detection)\]", re.M)
NET = "[net]\nwidth=32\nheight=32\nchannels=3\n\n"
CONV = "[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nbatch_normalize=1\nactivation=leaky\n\n"
ATOL = 1e-4  # boxes / input size and scores, as export's own check


def _model(path: Path, weights: Path | None = None) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused training keys, CfgWarnings: not this file's subject
        model = Darknet(path, warn_unused=False)
    if weights is not None:
        model.load_darknet_weights(weights)
    return model.eval()


def _golden(tmp_path: Path, case: str) -> Darknet:
    """The golden case's net with its Darknet-written weights; a [yolo] appended where it has no head."""
    text = (GOLDEN / case / f"{case}.cfg").read_text()
    if HEADS.search(text):
        return _model(GOLDEN / case / f"{case}.cfg", GOLDEN / case / f"{case}.weights")
    path = tmp_path / f"{case}.cfg"
    path.write_text(text + HEAD)
    return _model(path)


def _same_as_torch(model: Darknet, onnx_path: Path, sizes: list[tuple[int, int, int]]) -> None:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for b, h, w in sizes:
        x = torch.rand(b, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model(x)
        out = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert out.shape == ref.shape
        scale = torch.tensor([w, h, w, h] + [1.0] * (ref.shape[-1] - 4))
        err = float(((out - ref).abs() / scale).max())
        assert err <= ATOL, f"{onnx_path.name} at {b}x3x{h}x{w}: {err:.3g}"


# reorg: REORG_OLD; local_avgpool: size=4 stride=4 pads (once exported as a max-pool); xnor: with Darknet's weights
STATIC = ["region", "reorg", "reorg3d", "gaussian_yolo", "sam", "scale_channels", "scale_channels_wh", "classifier",
          "connected_bn", "local_avgpool", "contrastive", "yolo_new_coords", "xnor"]
DYNAMIC = ["region", "reorg", "reorg3d", "gaussian_yolo", "sam", "scale_channels", "local_avgpool", "contrastive"]


@needs_golden
@pytest.mark.parametrize("case", STATIC)
def test_golden_cases_export_and_run_as_torch(tmp_path, case):
    model = _golden(tmp_path, case)
    out = export_onnx(model, tmp_path / f"{case}.onnx")
    _same_as_torch(model, out, [(1, 64, 64)])


@needs_golden
@pytest.mark.parametrize("case", DYNAMIC)
def test_golden_cases_export_dynamic_sizes(tmp_path, case):
    model = _golden(tmp_path, case)
    out = export_onnx(model, tmp_path / f"{case}.onnx", dynamic=True)
    s = model.max_stride
    _same_as_torch(model, out, [(2, 64, 64), (1, 64 + s, 64 + 3 * s)])


SMALL = {
    "crop": "[crop]\ncrop_width=24\ncrop_height=20\nflip=0\nangle=0\n\n" + CONV + HEAD,
    "crop_noadjust": "[crop]\ncrop_width=24\ncrop_height=24\nnoadjust=1\n\n" + CONV + HEAD,
    "batchnorm": CONV + "[batchnorm]\n" + HEAD,
    "dropout_softmax_cost": CONV + "[dropout]\nprobability=.3\n\n[softmax]\ngroups=2\n\n[cost]\ntype=sse\n" + HEAD,
    "local": CONV + "[local]\nsize=3\nstride=1\npad=1\nfilters=8\nactivation=leaky\n" + HEAD,
    "strided_shortcut": "[convolutional]\nfilters=4\nsize=1\n\n" + CONV + "[shortcut]\nfrom=-2\n" + HEAD,
    "detection": CONV + "[maxpool]\nsize=2\nstride=2\n\n[connected]\noutput=208\nactivation=linear\n\n"
                 "[detection]\nclasses=3\ncoords=4\nrescore=1\nside=4\nnum=2\nsoftmax=1\nsqrt=1\n",
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_cfgs_export_and_run_as_torch(tmp_path, name):
    path = tmp_path / f"{name}.cfg"
    path.write_text(NET + SMALL[name])
    model = _model(path)
    with torch.no_grad():  # non-default BatchNorm statistics, so a lost BN or bias shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    out = export_onnx(model, tmp_path / f"{name}.onnx")
    _same_as_torch(model, out, [(1, 32, 32)])


@pytest.mark.parametrize("name, section", [("crop", None), ("local", "[local]"), ("detection", "[connected]")])
def test_dynamic_export_of_sections_sized_for_the_net_map_is_refused_naming_them(tmp_path, name, section):
    path = tmp_path / f"{name}.cfg"
    path.write_text(NET + SMALL[name])
    model = _model(path)
    if section is None:  # [crop]'s centre window follows the input size in the graph
        out = export_onnx(model, tmp_path / f"{name}.onnx", dynamic=True)
        s = model.max_stride
        _same_as_torch(model, out, [(1, 32 + s, 32 + 2 * s)])
        return
    line = path.read_text().splitlines().index(section) + 1
    where = rf"{name}\.cfg:{line}: \{section[:-1]}\]"
    with pytest.raises(ExportError, match=rf"--dynamic: .*{where}.*export without --dynamic"):
        export_onnx(model, tmp_path / f"{name}.onnx", dynamic=True)
    assert not (tmp_path / f"{name}.onnx").exists()


@needs_golden
def test_a_recurrent_section_is_refused_naming_it(tmp_path):
    cfg = GOLDEN / "crnn" / "crnn.cfg"
    model = _model(cfg)
    line = next(i for i, text in enumerate(cfg.read_text().splitlines(), 1) if text.strip() == "[crnn]")
    with pytest.raises(ExportError, match=rf"crnn\.cfg:{line}: \[crnn\]"):
        export_onnx(model, tmp_path / "crnn.onnx")
    assert not (tmp_path / "crnn.onnx").exists()


def test_a_classifier_is_refused_as_not_a_detector(tmp_path):
    path = tmp_path / "cls.cfg"
    path.write_text(NET + CONV + "[avgpool]\n\n[softmax]\n")
    with pytest.raises(ExportError, match=r"cls\.cfg: no \[yolo\] section; only detectors export"):
        export_onnx(_model(path), tmp_path / "cls.onnx")


def test_the_export_check_compares_with_the_models_own_pooling(tmp_path):
    """A [local_avgpool] with Darknet's uneven padding averages in the graph (it once became a MaxPool there, and
    the check, run against the rewritten copy, agreed)."""
    import onnx

    path = tmp_path / "lap.cfg"
    path.write_text(NET + CONV + "[local_avgpool]\nsize=4\nstride=4\n" + HEAD)
    model = _model(path)
    out = export_onnx(model, tmp_path / "lap.onnx")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "AveragePool" in ops and "MaxPool" not in ops
    _same_as_torch(model, out, [(1, 32, 32)])
    assert np.isfinite(ort.InferenceSession(str(out)).run(None, {"images": np.zeros((1, 3, 32, 32), "f4")})[0]).all()
