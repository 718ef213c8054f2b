"""The OpenCV DNN engine: ``cv2.dnn.readNetFromDarknet`` on a plain Darknet cfg + ``.weights``.

No torch anywhere on this path: the model info comes from the cfg text (:func:`plain_info`),
the network from OpenCV's own Darknet importer (already a dependency). It reads the cfgs Darknet
itself reads, which includes our deployed ACNet and pruned cfgs (``python -m yolo.deploy`` writes
plain ``[convolutional]`` sections); a cfg with a block of ours (``[res2net]``, ``[bottleneck]``,
``asymmetric=1``...) is refused naming its section, with the engines that do run it.

OpenCV's ``[yolo]`` output is, per layer, rows in (grid row, grid col, anchor) order of
``cx, cy, w, h`` as fractions of the input, objectness, then objectness x class probability,
each zeroed below the section's ``thresh`` (0.2 when absent). The cfg handed to OpenCV gets
``thresh=0`` so that nothing is zeroed, and the rows are brought to the eval contract:
(anchor, grid row, grid col) order, boxes in input pixels, class PROBABILITIES (the score
divided by the objectness; where the objectness underflows to 0 the scores are 0 as well and
the probabilities are reported as 0: such a row never passes a threshold).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend, BackendError, ModelInfo, register_engine
from .threads import engine_threads

#: the section types OpenCV's Darknet importer reads (opencv/modules/dnn/src/darknet/darknet_io.cpp)
OPENCV_SECTIONS = frozenset({"net", "network", "convolutional", "conv", "connected", "maxpool", "avgpool",
                             "softmax", "route", "reorg", "shortcut", "scale_channels", "upsample", "yolo",
                             "region", "dropout"})
#: activations OpenCV's importer knows
OPENCV_ACTIVATIONS = frozenset({"linear", "leaky", "relu", "mish", "swish", "logistic"})
#: keys of ours (or of Darknet) that OpenCV would silently ignore, changing the result
#: (measured: OpenCV 4.14 ignores ``dilation``, so a dilated convolution gives other outputs)
# key -> the value OpenCV assumes; share_index has no neutral value (its mere presence shares a layer's
# weights, which the importer does not do: it would read weights the file does not hold)
REFUSED_KEYS = {"convolutional": {"asymmetric": "0", "deform": "0", "xnor": "0", "dilation": "1",
                                  "share_index": "none"},
                "conv": {"asymmetric": "0", "dilation": "1"}}


def opencv_problem(sections: list[Any]) -> str | None:
    """Why OpenCV's Darknet importer cannot run these sections (None: it can); names the section."""
    for s in sections:
        kind = s.type
        if kind not in OPENCV_SECTIONS:
            return (f"{s.where()}: a block of this project that OpenCV's Darknet importer does not read; "
                    "run it with --backend torch, or export it (python -m yolo.export) and use onnxruntime")
        for key, default in REFUSED_KEYS.get(kind, {}).items():
            if s.options.get(key, default).strip() != default:
                hint = (" (deploy it first: python -m yolo.deploy writes the plain cfg OpenCV reads)"
                        if key == "asymmetric" else "")
                return (f"{s.where(key)}: '{key}={s.options[key]}' is not read by OpenCV's Darknet importer"
                        f"{hint}; run it with --backend torch")
        act = s.options.get("activation")
        if act is not None and kind in ("convolutional", "conv", "connected", "shortcut") \
                and act.strip() not in OPENCV_ACTIVATIONS:
            return f"{s.where('activation')}: activation '{act.strip()}' is not read by OpenCV's Darknet importer"
    return None


def plain_info(sections: list[Any], cfg_name: str, names: list[str] | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a plain Darknet cfg from its text alone (no model, no torch)."""
    net = sections[0]
    layers = sections[1:]
    strides: list[float] = []  # each section's output stride
    heads: list[tuple[float, Any]] = []
    for i, s in enumerate(layers):
        kind = s.type
        prev = strides[i - 1] if i else 1.0

        def ref(v: int, i: int = i) -> float:
            return strides[v if v >= 0 else i + v]

        if kind in ("convolutional", "conv", "maxpool", "reorg"):
            out = prev * int(s.options.get("stride", "1"))
        elif kind == "avgpool":
            out = prev  # global pooling: keeps what follows (a classifier) at the input stride
        elif kind == "upsample":
            out = prev / int(s.options.get("stride", "2"))
        elif kind == "route":
            out = ref(int(s.options["layers"].split(",")[0]))
        else:  # shortcut, dropout, yolo, region, scale_channels, softmax, connected
            out = prev
        strides.append(out)
        if kind in ("yolo", "region"):
            heads.append((out, s))
    if not heads:
        raise BackendError(f"{cfg_name}: no [yolo] section, nothing for the OpenCV engine to detect")
    classes = {int(s.options.get("classes", "80")) for _, s in heads}
    if len(classes) != 1:
        raise BackendError(f"{cfg_name}: [yolo] sections disagree on classes ({sorted(classes)})")
    last = heads[-1][1]
    extra: dict[str, Any] = {"nms_kind": last.options.get("nms_kind", "default").strip(),
                             "beta_nms": float(last.options.get("beta_nms", "0.6"))}
    height, width = int(net.options.get("height", "416")), int(net.options.get("width", "416"))
    return ModelInfo(num_classes=classes.pop(), input_size=(height, width),
                     letter_box=net.options.get("letter_box", "0").strip() not in ("0", ""),
                     max_stride=int(max(strides)), strides=[float(st) for st, _ in heads],
                     cfg_name=cfg_name, names=list(names) if names is not None else None, extra=extra)


def opencv_cfg_text(sections: list[Any]) -> str:
    """The cfg as handed to OpenCV, written from the parsed sections: every [yolo] section's
    ``thresh`` 0 (no score zeroed), and Darknet's default activation (logistic) spelled out on
    a [convolutional] without one (OpenCV's importer defaults to linear: measured, the outputs
    differ by ~1 where the key is missing)."""
    lines = []
    for s in sections:
        options = dict(s.options)
        if s.type == "yolo":
            options["thresh"] = "0"
        elif s.type in ("convolutional", "conv") and "activation" not in options:
            options["activation"] = "logistic"
        lines.append(f"[{s.type}]")
        lines.extend(f"{k}={v}" for k, v in options.items())
        lines.append("")
    return "\n".join(lines)


@register_engine("opencv")
class OpenCvBackend(Backend):
    """``cv2.dnn.Net`` from a Darknet cfg + weights, with the eval contract:
    ``np.ndarray[B, 3, H, W]`` -> ``np.ndarray[B, N, 5 + C]`` (any input size the cfg allows)."""

    precisions = ("fp32",)
    devices = ("cpu",)
    suffixes = (".weights",)
    needs_cfg = True

    def __init__(self, net: Any, info: ModelInfo, heads: list[tuple[int, float]]) -> None:
        super().__init__(info, "fp32", "cpu")
        self.net = net
        self.heads = heads  # (anchors, stride) of each [yolo] in cfg order
        self.out_names = list(net.getUnconnectedOutLayersNames())

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str = "fp32",
                   device: Any = "cpu", names: list[str] | None = None) -> "OpenCvBackend":
        import cv2

        from ..cfg import ConfigError, parse_cfg_text, read_cfg_text, resolve_cfg, resolve_path
        from ..weights_file import WEIGHTS_DIR

        if precision != "fp32":
            raise BackendError(f"precision '{precision}' is not available for the opencv backend (fp32 only)")
        if str(device) != "cpu":
            raise BackendError(f"device '{device}': the opencv backend runs on the CPU only")
        if cfg is None:
            raise BackendError("the opencv backend needs --cfg (the Darknet cfg of the weights)")
        try:
            cfg_path = resolve_cfg(cfg)
            weights_path = resolve_path(weights, WEIGHTS_DIR, "weights file")
        except (FileNotFoundError, ValueError) as e:
            raise BackendError(str(e)) from None
        if not str(weights_path).lower().endswith(".weights"):
            raise BackendError(f"{weights_path.name}: the opencv backend reads Darknet .weights files "
                               "(an .onnx runs with --backend onnxruntime or openvino)")
        try:
            text = read_cfg_text(cfg_path)
            sections = parse_cfg_text(text, str(cfg_path))
        except ConfigError as e:
            raise BackendError(str(e)) from None
        problem = opencv_problem(sections)
        if problem:
            raise BackendError(problem)
        info = plain_info(sections, cfg_path.name, names)
        heads = []
        for s in sections[1:]:
            if s.type == "yolo":
                mask = s.options.get("mask")
                n = len(mask.split(",")) if mask and mask.strip() else int(s.options.get("num", "1"))
                heads.append(n)
        if len(heads) != len(info.strides):
            raise BackendError(f"{cfg_path}: [region] heads are not supported by the opencv backend")
        try:
            net = cv2.dnn.readNetFromDarknet(np.frombuffer(opencv_cfg_text(sections).encode(), np.uint8),
                                             np.fromfile(str(weights_path), np.uint8))
        except cv2.error as e:
            first = (str(e).strip().splitlines() or ["cv2.error"])[-1]
            raise BackendError(f"{weights_path}: OpenCV cannot read it with {cfg_path.name}: {first}") from None
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        info.extra["opencv"] = {"cfg": str(cfg_path), "weights": str(weights_path)}
        return cls(net, info, list(zip(heads, info.strides)))

    def __call__(self, x: Any) -> Any:
        import cv2

        as_torch = type(x).__module__.startswith("torch")  # the engine contract before issue 19's numpy one
        arr = np.ascontiguousarray((x.detach().cpu().numpy() if as_torch else np.asarray(x)), dtype=np.float32)
        b, _, h, w = arr.shape
        self.threads = engine_threads()  # read at every call: --threads may change between runs
        cv2.setNumThreads(self.threads)
        self.net.setInput(arr)
        outs = self.net.forward(self.out_names)
        c = 5 + self.info.num_classes
        rows = []
        for out, (na, stride) in zip(outs, self.heads):
            ny, nx = int(round(h / stride)), int(round(w / stride))
            if out.size != b * ny * nx * na * c:
                raise BackendError(f"opencv output {out.shape} does not match {b}x{ny}x{nx}x{na}x{c} "
                                   f"for a {h}x{w} input: the size must be a multiple of {self.info.max_stride}")
            rows.append(out.reshape(b, ny, nx, na, c).transpose(0, 3, 1, 2, 4).reshape(b, -1, c))
        pred = np.concatenate(rows, 1)
        pred[..., [0, 2]] *= w
        pred[..., [1, 3]] *= h
        obj = pred[..., 4:5]
        np.divide(pred[..., 5:], obj, out=pred[..., 5:], where=obj > 0)
        pred[..., 5:] *= obj > 0
        if as_torch:
            import torch

            return torch.from_numpy(pred)
        return pred

    def describe(self) -> str:
        return f"opencv fp32 on cpu ({engine_threads()} threads)"


__all__ = ["OPENCV_SECTIONS", "OpenCvBackend", "opencv_cfg_text", "opencv_problem", "plain_info"]
