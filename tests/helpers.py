"""What the tests share: paths, tiny cfgs built in a temp folder, randomised BatchNorm."""
from __future__ import annotations

import filecmp
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from yolo import Darknet
from yolo.cfg import ConfigError
from yolo.weights import HEADER_VERSION as WEIGHTS_HEADER

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("YOLO_SHARED", ROOT.parent / "shared"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny.cfg"  # inference-only fixture
TRAIN_TINY = FIXTURES / "train_tiny.cfg"  # a cfg small enough to train in seconds

NET = "[net]\nwidth={w}\nheight={w}\nchannels={c}\n\n"


def build(tmp_path: Path, body: str, c: int = 4, w: int = 32, name: str = "t.cfg") -> Darknet:
    """A Darknet model from a cfg body written under a minimal [net] (c channels, w x w)."""
    path = tmp_path / name
    path.write_text(NET.format(w=w, c=c) + body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(path, warn_unused=False)


def randomize(model: nn.Module, seed: int = 0, conv_bias: bool = True) -> nn.Module:
    """Non-default BatchNorm affine parameters and statistics (and random conv biases), so that
    folding and stream-order mistakes change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_((torch.rand(m.running_mean.shape, generator=g) - 0.5) * 0.4)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif conv_bias and isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


# --- Darknet's own cfg folder (tests/test_zoo.py and benchmarks/zoo_status.py share these) ----------------
ZOO = SHARED / "models" / "darknet-cfg" / "zoo"
#: every cfg of Darknet's cfg/ folder and of its cfg/yolov1/ (zoo/README.md), relative to ZOO
ZOO_CFGS = (
    "Gaussian_yolov3_BDD.cfg", "alexnet.cfg", "cd53paspp-gamma.cfg", "cifar.cfg", "cifar.test.cfg",
    "crnn.train.cfg", "csdarknet53-omega.cfg", "cspx-p7-mish-omega.cfg", "cspx-p7-mish.cfg", "cspx-p7-mish_hp.cfg",
    "csresnext50-panet-spp-original-optimal.cfg", "csresnext50-panet-spp.cfg", "darknet.cfg", "darknet19.cfg",
    "darknet19_448.cfg", "darknet53.cfg", "darknet53_448_xnor.cfg", "densenet201.cfg", "efficientnet-lite3.cfg",
    "efficientnet_b0.cfg", "enet-coco.cfg", "extraction.cfg", "extraction.conv.cfg", "extraction22k.cfg",
    "go.test.cfg", "gru.cfg", "jnet-conv.cfg", "lstm.train.cfg", "resnet101.cfg", "resnet152.cfg",
    "resnet152_trident.cfg", "resnet50.cfg", "resnext152-32x4d.cfg", "rnn.cfg", "rnn.train.cfg", "strided.cfg",
    "t1.test.cfg", "tiny-yolo-voc.cfg", "tiny-yolo.cfg", "tiny-yolo_xnor.cfg", "tiny.cfg", "vgg-16.cfg",
    "vgg-conv.cfg", "writing.cfg", "yolo-voc.2.0.cfg", "yolo-voc.cfg", "yolo.2.0.cfg", "yolo.cfg", "yolo9000.cfg",
    "yolov2-tiny-voc.cfg", "yolov2-tiny.cfg", "yolov2-voc.cfg", "yolov2.cfg", "yolov3-openimages.cfg",
    "yolov3-spp.cfg", "yolov3-tiny-prn.cfg", "yolov3-tiny.cfg", "yolov3-tiny_3l.cfg", "yolov3-tiny_obj.cfg",
    "yolov3-tiny_occlusion_track.cfg", "yolov3-tiny_xnor.cfg", "yolov3-voc.cfg", "yolov3-voc.yolov3-giou-40.cfg",
    "yolov3.cfg", "yolov3.coco-giou-12.cfg", "yolov3_5l.cfg", "yolov4-csp-s-mish.cfg", "yolov4-csp-swish.cfg",
    "yolov4-csp-x-mish.cfg", "yolov4-csp-x-swish-frozen.cfg", "yolov4-csp-x-swish.cfg", "yolov4-csp.cfg",
    "yolov4-custom.cfg", "yolov4-p5-frozen.cfg", "yolov4-p5.cfg", "yolov4-p6.cfg",
    "yolov4-sam-mish-csp-reorg-bfm.cfg", "yolov4-tiny-3l.cfg", "yolov4-tiny-custom.cfg", "yolov4-tiny.cfg",
    "yolov4-tiny_contrastive.cfg", "yolov4.cfg", "yolov4_new.cfg", "yolov4x-mish.cfg", "yolov7-tiny.cfg",
    "yolov7.cfg", "yolov7x.cfg", "yolov1/tiny-coco.cfg", "yolov1/tiny-yolo.cfg", "yolov1/xyolo.test.cfg",
    "yolov1/yolo-coco.cfg", "yolov1/yolo-small.cfg", "yolov1/yolo.cfg", "yolov1/yolo.train.cfg", "yolov1/yolo2.cfg",
)
#: the character-level text models (zoo/README.md): not image models, refused
ZOO_TEXT_MODELS = frozenset({"rnn.cfg", "rnn.train.cfg", "gru.cfg", "lstm.train.cfg", "crnn.train.cfg"})
_HEAD_RE = re.compile(r"^\s*\[(yolo|region|Gaussian_yolo|detection)\]", re.M)
_CLASSIFIER_RE = re.compile(r"^\s*\[(softmax|connected|conn|avgpool|avg|cost)\]", re.M)


def zoo_kind(name: str) -> str:
    """'text', 'detector' (a [yolo], [region], [Gaussian_yolo] or [detection] head), 'classifier'
    (a [softmax], [connected], [avgpool] or [cost] at the top) or 'conv-only' (a bare backbone)."""
    if name in ZOO_TEXT_MODELS:
        return "text"
    text = (ZOO / name).read_text()
    return "detector" if _HEAD_RE.search(text) else "classifier" if _CLASSIFIER_RE.search(text) else "conv-only"


def sized_cfg(src: Path, out: Path, size: int, edit: Callable[[str], str] | None = None) -> Path:
    """A copy of ``src`` whose [net] width and height are ``size`` (every other line as written), written
    to ``out``; ``edit`` may change the text further."""
    text = src.read_text()
    head = re.search(r"^\s*\[(?!net\]|network\])", text, re.M)  # the first section after [net]
    cut = head.start() if head else len(text)
    net = re.sub(r"^(\s*)(width|height)(\s*)=.*$", rf"\g<1>\g<2>\g<3>={size}", text[:cut], flags=re.M)
    text = net + text[cut:]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(edit(text) if edit else text)
    return out


def small_size(stride: int, at_least: int = 64) -> int:
    """The smallest multiple of ``stride`` that is at least ``at_least``."""
    stride = max(int(stride), 1)
    return stride * -(-at_least // stride)


def write_random_weights(path: Path, floats: int, seed: int = 0, seen: int = 0) -> Path:
    """A Darknet .weights file as yolo/weights.py writes one (header 0.2.5, int64 ``seen``) holding
    ``floats`` random float32 values, written in 16M-value pieces to bound the memory."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.array(WEIGHTS_HEADER, np.int32).tofile(f)
        np.array([seen], np.int64).tofile(f)
        for start in range(0, floats, 1 << 24):
            (rng.random(min(1 << 24, floats - start), dtype=np.float32) * 2 - 1).tofile(f)
    return path


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (compared in pieces, not read whole)."""
    return filecmp.cmp(a, b, shallow=False)


def calibrate_bn(model: Darknet, x: torch.Tensor, seed: int = 0) -> Darknet:
    """Random but well-scaled BatchNorm for comparisons on random weights (a generic form of
    test_parity_opencv.randomise_bn): in one eval forward over ``x``, each BatchNorm, in the order the
    net runs them, takes the statistics of the input it is given (then perturbed) and contracting affine
    terms; each head's last convolution is then scaled so its raw outputs have unit spread. Every
    layer's output stays of order one however deep the net (the statistics are those of the eval
    forward itself, not of a training pass whose maps differ), so a relative comparison layer by layer
    means the same at layer 5 and at layer 300."""
    g = torch.Generator().manual_seed(seed)

    def set_stats(m: nn.BatchNorm2d, args: tuple) -> None:
        n = m.num_features
        mean = args[0].mean((0, 2, 3))
        var = args[0].var((0, 2, 3), unbiased=False)
        # on a small map a few values give some channels a near-zero variance: dividing by it would
        # amplify float noise (and any difference) at every later layer, so no channel goes under a
        # quarter of the layer's mean
        var = var.clamp_min(0.25 * float(var.mean()) + 1e-6)
        m.running_mean.copy_(mean + torch.randn(n, generator=g) * 0.05 * var.sqrt())
        m.running_var.copy_(var * (torch.rand(n, generator=g) * 0.4 + 0.8))
        m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)

    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        hooks = [m.register_forward_pre_hook(set_stats) for m in bns]
        try:
            model.eval()(x)
        finally:
            for h in hooks:
                h.remove()
        blocks = list(model.module_list)
        convs = []
        for head in model.heads:
            units = list(blocks[blocks.index(head) - 1].weight_units())
            if units and isinstance(units[-1], tuple) and units[-1][1] is None:
                convs.append(units[-1][0])  # a plain convolution with biases right before the head
        raw: dict[nn.Module, torch.Tensor] = {}
        hooks = [c.register_forward_hook(lambda mod, inp, out: raw.setdefault(mod, out)) for c in convs]
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
        for conv in convs:
            std = raw[conv].std()
            conv.weight.div_(std)
            conv.bias.div_(std)
    return model


# --- OpenCV's Darknet importer as a reference, layer by layer ---------------------------------------------
_CV_ACTIVATIONS = frozenset({"relu", "leaky", "swish", "mish", "logistic", "sigmoid", "tanh", "elu", "selu",
                             "gelu", "hardswish", "relu6"})


def opencv_section_outputs(layer_names: Sequence[str]) -> dict[int, str]:
    """Section index -> the name of the OpenCV layer holding that section's output.

    OpenCV's importer (darknet_io.cpp) names the layers of section i ``<kind>_i`` (conv_3, bn_3, ...) but
    the activation it appends after counting the section, so that one carries i + 1 (``leaky_4`` ends
    section 3), and a [region] is ``permute_i`` then ``detection_out``; a section's last layer is its output.
    """
    out: dict[int, str] = {}
    permuted = -1
    for name in layer_names:
        if name == "detection_out":
            out[permuted] = name
            continue
        m = re.fullmatch(r"(.+)_(\d+)", name)
        if not m:
            continue
        kind, index = m.group(1), int(m.group(2))
        if kind in _CV_ACTIVATIONS:
            index -= 1
        elif kind == "permute":
            permuted = index
        out[index] = name
    return out


def opencv_cfg_text(text: str) -> str:
    """The cfg as OpenCV must read it to report every class score: each [yolo]/[region] ``thresh`` near
    zero (OpenCV zeroes the scores under it; our eval contract has no threshold)."""
    text = re.sub(r"^\s*thresh\s*=.*$", "", text, flags=re.M)
    return re.sub(r"^(\s*\[(yolo|region)\]\s*)$", r"\1\nthresh=0.0000001", text, flags=re.M)


def opencv_head_rows(out: np.ndarray, head: nn.Module, hw: tuple[int, int]) -> np.ndarray:
    """OpenCV's [yolo]/[region] rows (grid row, grid col, anchor; boxes as fractions of the input) in our
    order (anchor, grid row, grid col) and units (boxes in input pixels)."""
    h, w = hw
    ny, nx, na = int(h // head.out_stride), int(w // head.out_stride), head.num_anchors
    rows = out.reshape(ny, nx, na, -1).transpose(2, 0, 1, 3).reshape(na * ny * nx, -1).copy()
    rows[:, [0, 2]] *= w
    rows[:, [1, 3]] *= h
    return rows


def head_error(ours: np.ndarray, theirs: np.ndarray, hw: tuple[int, int], nms: bool = False) -> float:
    """The largest difference between our eval rows of one head (cx, cy, w, h in pixels, objectness, class
    probabilities) and OpenCV's (objectness x probability where it reports one): boxes as fractions of
    the input, objectness and scores as they are. ``nms``: OpenCV ran its NMS on these rows (its [region]
    always does, zeroing the scores of overlapped boxes), so only the scores it kept are compared."""
    h, w = hw
    scale = np.array([w, h, w, h], np.float32)
    box = np.abs(ours[:, :4] / scale - theirs[:, :4] / scale).max()
    obj = np.abs(ours[:, 4] - theirs[:, 4]).max()
    scores = ours[:, 4:5] * ours[:, 5:]
    reported = theirs[:, 5:] > 0
    if not nms and not reported[scores > 1e-3].all():
        return float("inf")  # OpenCV zeroed a score that matters: not the same head
    if reported.mean() < 0.25:
        return float("inf")  # too few scores left to compare
    cls = np.abs(scores[reported] - theirs[:, 5:][reported]).max() if reported.any() else 0.0
    return float(max(box, obj, cls))


def section_outputs(model: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    """Every section's output of one eval forward (a head's: its decoded rows)."""
    outs: list[torch.Tensor] = [None] * len(model.module_list)  # type: ignore[list-item]
    hooks = [b.register_forward_hook(lambda m, a, y, i=i: outs.__setitem__(i, y))
             for i, b in enumerate(model.module_list)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


def opencv_parity(cfg: Path, tmp: Path, size: int, seed: int = 0) -> dict:
    """Our model and OpenCV's reading of the same cfg and random weights at ``size`` x ``size``, section by
    section: {'layers': [(index, type, relative error)], 'heads': [(index, error)], 'chained': [(index,
    type, error)], 'missing': [(index, type, why)]}.

    The model is built from ``cfg`` (resized), its weights are random with calibrated BatchNorm
    (:func:`calibrate_bn`, eps 1e-6 as OpenCV's importer fixes it), saved by our writer and read by
    OpenCV, which gives every section's output (fusion off). ``layers`` and ``heads``: each of our
    sections alone, fed OpenCV's outputs of the sections it reads, against OpenCV's output of it (a map:
    max |ours - OpenCV| / max |OpenCV|; a head: :func:`head_error`): float32 rounding, near 1e-6, does
    not pile up with depth there, while a wrong layer or a weights-stream mix-up is of order one.
    ``chained``: the same measures for our whole forward from the input (they grow with depth: a random
    net at unit gain amplifies rounding differences, ~1e-2 after 200 layers). ``missing``: sections
    OpenCV gives no comparable output for.
    """
    import cv2

    ours_cfg = sized_cfg(cfg, tmp / "ours" / cfg.name, size)
    cv_cfg = sized_cfg(cfg, tmp / "opencv" / cfg.name, size, edit=opencv_cfg_text)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(ours_cfg, warn_unused=False)
    rng = np.random.default_rng(seed)
    batch = torch.from_numpy(rng.random((8, model.net.channels, size, size), dtype=np.float32))
    calibrate_bn(model, batch, seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-6
    weights = tmp / "random.weights"
    model.save_darknet_weights(weights)
    x = batch[:1]
    ours = section_outputs(model, x)
    cv2.setNumThreads(2)
    net = cv2.dnn.readNetFromDarknet(str(cv_cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)  # a fused layer's own output is not kept (a conv writes into its concat)
    names = opencv_section_outputs(net.getLayerNames())
    wanted = [i for i in range(len(ours)) if i in names]
    net.setInput(x.numpy())
    theirs = dict(zip(wanted, net.forward([names[i] for i in wanted])))
    # OpenCV's maps as tensors of our shapes (a [connected]: (1, n) there, (1, n, 1, 1) here)
    maps = {i: torch.from_numpy(t.copy()).reshape(ours[i].shape) for i, t in theirs.items()
            if i < len(ours) and ours[i].dim() == 4 and t.size == ours[i].numel()}
    result: dict = {"layers": [], "heads": [], "chained": [], "missing": []}
    x_cv = x  # the main input each section gets, from OpenCV's outputs (a head passes it on)
    for i, (block, section) in enumerate(zip(model.module_list, model.sections)):
        t = theirs.get(i)
        if t is None:
            result["missing"].append((i, section.type, "no OpenCV output"))
            continue
        with torch.no_grad():  # this section alone, fed OpenCV's outputs of the sections it reads
            refs = [maps.get(j, ours[j]) for j in block.inputs]
            alone = block(x_cv, refs) if block.inputs and not block.is_output else block(x_cv)
        if block in model.heads:
            t = opencv_head_rows(t, block, (size, size))
            if ours[i][0].shape != t.shape:
                result["missing"].append((i, section.type, f"rows {tuple(ours[i][0].shape)} vs {t.shape}"))
                continue
            nms = section.type == "region"
            result["heads"].append((i, head_error(alone[0].numpy(), t, (size, size), nms)))
            result["chained"].append((i, section.type, head_error(ours[i][0].numpy(), t, (size, size), nms)))
            continue
        if i not in maps or tuple(alone.shape) != tuple(maps[i].shape):
            result["missing"].append((i, section.type, f"shape {tuple(ours[i].shape)} vs {tuple(t.shape)}"))
            continue
        t = maps[i]
        scale = max(float(t.abs().max()), 1e-6)
        result["layers"].append((i, section.type, float((alone - t).abs().max()) / scale))
        result["chained"].append((i, section.type, float((ours[i] - t).abs().max()) / scale))
        x_cv = t
    return result


@dataclass
class RoundTrip:
    """What :func:`weights_round_trip` saw."""

    floats: int  # the net's num_weight_floats()
    seen: int  # ``seen`` as the loaded model read it
    same_bytes: bool  # the saved file equals the one loaded
    cut: int  # the section count yolo.partial kept
    cut_floats: int  # num_weight_floats(cut)
    partial_floats: int  # what yolo.partial says it wrote
    partial_header: tuple[int, ...]  # its version and seen
    partial_is_prefix: bool  # its stream is the first cut_floats of the random one


def weights_round_trip(cfg: Path, tmp: Path, seed: int = 0, seen: int = 123_456_789_012) -> RoundTrip:
    """Random floats, exactly as many as ``cfg``'s net reads, in a Darknet file (header 0.2.5, ``seen``):
    loaded into the net (built on the meta device and given uninitialised memory: the file fills every
    float) and saved again; then ``yolo.partial`` at the middle section. Files go to ``tmp``."""
    from yolo.partial import partial

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = Darknet(cfg, warn_unused=False)
    model.to_empty(device="cpu")
    floats = model.num_weight_floats()
    cut = max(1, len(model.module_list) // 2)
    cut_floats = model.num_weight_floats(cut)
    first = write_random_weights(tmp / "random.weights", floats, seed=seed, seen=seen)
    model.load_darknet_weights(first)
    read_seen = model.seen
    again = tmp / "again.weights"
    model.save_darknet_weights(again)
    del model
    same = first.stat().st_size == 20 + 4 * floats and same_bytes(first, again)
    again.unlink()
    cutted = tmp / "partial.weights"
    written = partial(cfg, first, cutted, cut)
    data = np.fromfile(cutted, np.uint8)
    header = tuple(int(v) for v in data[:12].view(np.int32)) + (int(data[12:20].view(np.int64)[0]),)
    with open(first, "rb") as f:
        f.seek(20)
        prefix = data.size == 20 + 4 * cut_floats and np.array_equal(
            data[20:], np.frombuffer(f.read(4 * cut_floats), np.uint8))
    cutted.unlink()
    first.unlink()
    return RoundTrip(floats, read_seen, same, cut, cut_floats, written, header, prefix)


def zoo_small_cfg(name: str, out_dir: Path, stride: int, full: int) -> tuple[Path, int]:
    """A copy of zoo cfg ``name`` at the smallest size, a multiple of ``stride`` from 64 up to its own
    ``full`` size, at which it builds ([connected] and [local] layers need their maps to exist);
    (path, size). Where none does, the cfg as it is."""
    size = small_size(stride)
    while size < full:
        path = sized_cfg(ZOO / name, out_dir / name, size)
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                Darknet(path, warn_unused=False)
            return path, size
        except ConfigError:
            size *= 2
    return sized_cfg(ZOO / name, out_dir / name, full), full
