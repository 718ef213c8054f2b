"""ONNX export (+ INT8 quantisation): ``python -m yolo.export --cfg C --weights W --out model.onnx``.

The graph computes the eval contract of :class:`yolo.model.Darknet`: one input ``images``
``(B, 3, H, W)`` float32 RGB in [0, 1] and one output ``predictions`` ``(B, N, 5 + C)``: cx, cy,
w, h in input pixels, objectness, class probabilities (the [yolo] decode is in the graph, NMS
is not: post-processing stays in :mod:`yolo.boxes`, shared by every engine). Opset 17.

The file's ``metadata_props`` carry what pre- and post-processing need (class names, cfg name,
input size, ``letter_box``, strides, max stride, nms_kind / beta_nms), so a ``.onnx`` alone runs:
``python detect.py --weights model.onnx``. ``--int8`` writes a statically quantised copy (QDQ,
per-channel int8 weights, uint8 activations) calibrated on images you name, pre-processed exactly
as at inference (:func:`yolo.boxes.fit_image` + :func:`yolo.boxes.to_tensor`); the first
convolution, the heads' last convolutions and the [yolo] decode stay fp32 (see :data:`KEEP_FP32`).
INT8 is opt-in: fp32 stays the default export.
"""
from __future__ import annotations

import copy
import json
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .backends.base import ModelInfo
from .errors import YoloError

METADATA_VERSION = "1"
INPUT_NAME, OUTPUT_NAME = "images", "predictions"
OPSET = 17
#: What may stay fp32 in an INT8 export. Measured on coco128 with yolo-fastest-1.1 (fp32 mAP@.5
#: 0.3298; 64 calibration images, percentile unless said): everything quantised (MinMax) 0.140;
#: decode fp32 (MinMax) 0.300; + heads' last convs 0.306; + the first conv 0.323 (MinMax 0.317;
#: Entropy gave MinMax's ranges); + depthwise convs 0.292. The [yolo] decode must stay fp32: its
#: output mixes pixel coordinates and probabilities in one tensor, one uint8 scale cannot hold both.
KEEP_FP32 = ("none", "decode", "heads", "first", "depthwise")
DEFAULT_KEEP_FP32 = "heads,first"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIB_IMAGES = 64


class ExportError(YoloError):
    """A model or request the ONNX export cannot honour; the message names the section or option."""


# ---------------------------------------------------------------------------------------------
# fp32 export
# ---------------------------------------------------------------------------------------------
def _inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A fused, eval-mode, NCHW, CPU copy of ``model`` (the caller's model is left as it is)."""
    m = copy.deepcopy(model).cpu().eval()
    for head in m.heads:  # a grid cached at one size would enter the trace as a constant
        head.clear_cache()
    if not m.fused:
        m.fuse(channels_last=False)
    return m.to(memory_format=torch.contiguous_format)


class _PaddedMaxPool(torch.autograd.Function):
    """Darknet's asymmetric max-pool padding (F.pad with -inf, then max_pool2d) as ONE ONNX MaxPool
    with explicit begin/end pads (ONNX MaxPool ignores padded cells): no -inf tensor in the graph,
    which INT8 calibration could not range, and one node less. Forward: the block's own maths."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int, step: int, pads: tuple[int, int, int, int]) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, pads, value=float("-inf")), size, step)

    @staticmethod
    def symbolic(g: Any, x: Any, size: int, step: int, pads: tuple[int, int, int, int]) -> Any:
        left, right, top, bottom = pads
        return g.op("MaxPool", x, kernel_shape_i=[size, size], strides_i=[step, step],
                    pads_i=[top, left, bottom, right])


def _export_friendly_maxpools(model: torch.nn.Module, hw: tuple[int, int]) -> list[torch.nn.Module]:
    """In the export copy: each [maxpool] that pads through F.pad runs as :class:`_PaddedMaxPool`
    with its plan at ``hw`` (fixed for every multiple of the stride: see _dynamic_ready). Returns the
    blocks changed, for :func:`_restore_forwards` ([local_avgpool], a MaxPool by geometry, averages: kept)."""
    from .blocks.routing import MaxPool

    shapes = [(hw[0], hw[1])] + [o[1:] for o in model.output_shapes(*hw)[:-1]]
    changed = []
    for i, block in enumerate(model.module_list):
        if type(block) is MaxPool:
            pads, inner = block._plan(*shapes[i])  # noqa: SLF001
            if any(pads):
                block.forward = (lambda x, b=block, p=pads: _PaddedMaxPool.apply(x, b.size, b.step, p))
                changed.append(block)
    return changed


def _restore_forwards(blocks: list[torch.nn.Module]) -> None:
    """Undo :func:`_export_friendly_maxpools`, so the check compares the graph with the blocks' own maths."""
    for block in blocks:
        vars(block).pop("forward", None)


def _dynamic_ready(model: torch.nn.Module, hw: tuple[int, int]) -> None:
    """A dynamic graph must run at every size: refuse, naming the section, one sized for the [net] map
    ([connected], [local], [detection]: a ConfigError at another size) or a pool whose padding plan (baked
    into the graph at the export size) differs at another multiple of the stride."""
    from .blocks.routing import MaxPool
    from .cfg import ConfigError

    s = model.max_stride
    sizes = [hw, (hw[0] + s, hw[1] + s), (hw[0] + 2 * s, hw[1] + 3 * s)]
    in_shapes = []
    for h, w in sizes:
        try:
            out = model.output_shapes(h, w)
        except ConfigError as e:
            raise ExportError(f"--dynamic: {e} (at input {h}x{w}); a dynamic graph must run at every size: "
                              "export without --dynamic (one size)") from None
        in_shapes.append([(h, w)] + [o[1:] for o in out[:-1]])
    for i, block in enumerate(model.module_list):
        if isinstance(block, MaxPool):
            plans = {block._plan(*shapes[i]) for shapes in in_shapes}  # noqa: SLF001 (the plan is the point)
            if len(plans) > 1:
                raise ExportError(f"{block.where} size={block.size} stride={block.step} "
                                  f"padding={block.padding} pads differently at different input sizes; "
                                  "ONNX pooling padding is fixed: export without --dynamic (one size)")


def _export(model: torch.nn.Module, args: tuple, f: Any, opset: int, dynamic: bool = False) -> None:
    axes = ({INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "boxes"}}
            if dynamic else None)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape constants (checked after export)
        torch.onnx.export(model, args, f, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True)


class _OneBlock(torch.nn.Module):
    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Any) -> torch.Tensor:
        return self.block(*args)


def _failing_block(model: torch.nn.Module, x: torch.Tensor, opset: int) -> Any:
    """The first section that does not export on its own (its inputs recorded from one forward)."""
    import io

    seen: dict[int, tuple] = {}
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: seen.setdefault(i, args))
             for i, b in enumerate(model.module_list)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    for i, block in enumerate(model.module_list):
        try:
            _export(_OneBlock(block), seen[i], io.BytesIO(), opset)
        except Exception:  # noqa: BLE001
            return block
    return None


def _trace(model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic: bool, opset: int) -> None:
    """torch.onnx (TorchScript tracer); an error is reported with the section that causes it."""
    try:
        _export(model, (x,), str(path), opset, dynamic)
    except Exception as e:  # noqa: BLE001 (any tracer/symbolic failure becomes one message naming the section)
        try:
            block = _failing_block(model, x, opset)
        except Exception:  # noqa: BLE001
            block = None
        where = block.where if block is not None else str(getattr(model, "cfg_path", "the model"))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{where} cannot be expressed in ONNX opset {opset}: {first}") from e


def model_metadata(model: torch.nn.Module, names: Sequence[str], hw: tuple[int, int], batch: int | None,
                   precision: str = "fp32") -> dict[str, str]:
    """The ``metadata_props`` of an export (all strings; lists as JSON): the model info an engine
    reads back (:meth:`ModelInfo.from_metadata`), then what only the file knows."""
    return {
        "yolo.format": METADATA_VERSION,
        "producer": "yolo.export",
        **ModelInfo.from_model(model, names, input_size=hw).to_metadata(),
        "batch": "dynamic" if batch is None else str(batch),
        "dynamic_size": "0",
        "precision": precision,
        "yolo.blocks": json.dumps([i for i, b in enumerate(model.module_list) if b.is_output]),
    }


def set_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.doc_string = f"Darknet {meta.get('cfg_name', '')} exported by yolo.export (eval contract, NMS outside)"
    onnx.save(proto, str(path))


def check_onnx(model: torch.nn.Module, path: Path, shapes: Sequence[tuple[int, int, int]], tol: float = 1e-4) -> float:
    """Runs ``path`` in onnxruntime against ``model`` on random inputs of each (batch, h, w) in ``shapes``:
    boxes / input size and scores must agree within ``tol``; returns the largest such error."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for b, h, w in shapes:
        x = torch.rand(b, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model(x)
        out = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
        if out.shape != ref.shape:
            raise ExportError(f"{path}: onnxruntime output {tuple(out.shape)} != PyTorch {tuple(ref.shape)} "
                              f"at input {b}x3x{h}x{w}")
        scale = torch.tensor([w, h, w, h] + [1.0] * (ref.shape[-1] - 4))
        err = float(((out - ref).abs() / scale).max()) if ref.numel() else 0.0
        worst = max(worst, err)
        if not err <= tol:
            raise ExportError(f"{path}: onnxruntime differs from PyTorch by {err:.3g} (boxes / input size, "
                              f"scores) at input {b}x3x{h}x{w}; the trace did not capture the model")
    return worst


def export_onnx(model: torch.nn.Module, out: str | Path, img_size: int | Sequence[int] | None = None,
                batch: int = 1, dynamic: bool = False, names: Sequence[str] | None = None, opset: int = OPSET,
                check: bool = True) -> Path:
    """Write ``model``'s eval graph to ``out`` (``.onnx``) with our metadata; returns the path.

    ``img_size``: one size or (height, width), a multiple of the max stride (default: the cfg's);
    ``batch``: fixed batch size, or ``dynamic=True`` for dynamic batch, height and width;
    ``names``: class names to store (default: data/coco.names for 80 classes, else the numbers);
    ``check``: compare onnxruntime with PyTorch on random input (export size; + another size and
    batch 2 when dynamic) and raise :class:`ExportError` beyond 1e-4.
    """
    from .detect_inputs import image_size, resolve_names

    if not getattr(model, "heads", None):
        raise ExportError(f"{getattr(model, 'cfg_path', 'model')}: no [yolo] section; only detectors export")
    if opset < 11:
        raise ExportError(f"opset {opset}: needs 11 or later (Resize, dynamic Range); default {OPSET}")
    if not dynamic and batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    hw = image_size(img_size, model.input_size, model.max_stride)
    names = resolve_names(names, None, model.num_classes, model.cfg_path)
    m = _inference_copy(model)
    m.check_input(torch.empty(1, m.net.channels, *hw, device="meta"))  # maps that vanish at this size
    if dynamic:
        _dynamic_ready(m, hw)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(2 if dynamic else batch, m.net.channels, *hw)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:  # atomic: no file if it fails
        tmp_path = Path(tmp) / out.name
        changed = _export_friendly_maxpools(m, hw)
        try:
            _trace(m, x, tmp_path, dynamic, opset)
        finally:
            _restore_forwards(changed)
        set_metadata(tmp_path, model_metadata(m, names, hw, None if dynamic else batch)
                     | ({"dynamic_size": "1"} if dynamic else {}))
        if check:
            s = m.max_stride
            shapes = [(2, hw[0], hw[1]), (1, hw[0] + s, hw[1] + 2 * s)] if dynamic else [(batch, *hw)]
            check_onnx(m, tmp_path, shapes)
        tmp_path.replace(out)
    return out


# ---------------------------------------------------------------------------------------------
# INT8
# ---------------------------------------------------------------------------------------------
def calibration_images(source: str | Path, limit: int = DEFAULT_CALIB_IMAGES) -> list[Path]:
    """Up to ``limit`` image paths, spread evenly over ``source``: a folder of images, a Darknet
    ``.data`` file (its valid split), a COCO instances ``.json``, an image list ``.txt`` or any other
    registered dataset format (:func:`yolo.datasets.dataset_images`)."""
    from .datasets import DataError, dataset_images
    from .io import is_image

    source = Path(source)
    if not source.exists():
        raise ExportError(f"--calib-data: '{source}' not found")
    if source.is_dir():  # every image below the folder, whatever dataset layout it holds
        paths = sorted(p for p in source.rglob("*") if p.is_file() and is_image(p))
    else:
        try:
            paths = dataset_images(source)
        except DataError as e:
            raise ExportError(f"--calib-data: {e}") from None
    if not paths:
        raise ExportError(f"--calib-data: no images in '{source}'")
    if limit < 1:
        raise ExportError(f"--calib-images must be >= 1, got {limit}")
    if len(paths) > limit:
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    return paths


class _Calibration:
    """onnxruntime's CalibrationDataReader over images, preprocessed as at inference."""

    def __init__(self, paths: list[Path], hw: tuple[int, int], letter_box: bool, batch: int) -> None:
        self.paths, self.hw, self.letter_box, self.batch = paths, hw, letter_box, batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        from .boxes import fit_image, to_tensor
        from .io import imread

        images = []
        for p in self.paths:
            img, why = imread(p)
            if img is None:
                warnings.warn(f"{p}: {why}; not used for calibration")
                continue
            images.append(fit_image(img, self.hw, self.letter_box)[0])
            if len(images) == self.batch:
                yield {INPUT_NAME: to_tensor(images).numpy()}
                images = []
        if images and self.batch == 1:
            yield {INPUT_NAME: to_tensor(images).numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def fp32_node_names(path: Path, keep: str) -> list[str]:
    """Nodes of an export of ours that stay fp32; ``keep`` is a comma list of :data:`KEEP_FP32`:
    ``decode`` (nodes scoped in a [yolo] block, and the final concatenation), ``heads`` (the decode +
    every node of the block feeding a [yolo] block: its last convolution), ``first`` (the first
    convolution, which sees the raw image), ``depthwise`` (grouped convolutions), ``none``."""
    import onnx

    parts = {k.strip() for k in keep.split(",") if k.strip()}
    bad = parts - set(KEEP_FP32)
    if bad or not parts:
        raise ExportError(f"keep_fp32: expected a comma list of {', '.join(KEEP_FP32)}, got '{keep}'")
    proto = onnx.load(str(path), load_external_data=False)
    # always: a [maxpool]'s -inf padding (yolov3-tiny's size-2 stride-1 pool) has no int8 range
    pads = {o for n in proto.graph.node if n.op_type == "Pad" for o in n.output}
    always = [n.name for n in proto.graph.node if n.op_type == "Pad" or set(n.input) & pads]
    if parts == {"none"}:
        return always
    meta = {p.key: p.value for p in proto.metadata_props}
    yolo_blocks = set(json.loads(meta.get("yolo.blocks", "[]")))
    fp32_blocks = set(yolo_blocks) if parts & {"decode", "heads"} else set()
    if "heads" in parts:
        fp32_blocks |= {i - 1 for i in yolo_blocks}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    names = []
    for node in proto.graph.node:
        found = re.match(r"/module_list\.(\d+)/", node.name)
        if found is None and parts & {"decode", "heads"}:
            names.append(node.name)  # the final concatenation of the heads
        elif found is not None and int(found.group(1)) in fp32_blocks:
            names.append(node.name)
    if "first" in parts and convs:
        names.append(convs[0].name)
    if "depthwise" in parts:
        names += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return sorted(set(names + always))


def quantize_int8(fp32: str | Path, out: str | Path, calib_data: str | Path,
                  calib_images: int = DEFAULT_CALIB_IMAGES, method: str = "percentile",
                  keep_fp32: str = DEFAULT_KEEP_FP32, per_channel: bool = True,
                  op_types: Sequence[str] | None = None) -> Path:
    """Static INT8 (QDQ) copy of our fp32 export ``fp32``, calibrated on ``calib_data`` images.

    ``op_types``: the ONNX op types to quantise (default: onnxruntime's QDQ list)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'")
    fp32, out = Path(fp32), Path(out)
    proto = onnx.load(str(fp32))
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("yolo.format") is None:
        raise ExportError(f"{fp32}: not an export of ours (no yolo metadata); export it with python -m yolo.export")
    hw = tuple(json.loads(meta["input_size"]))
    batch = 1 if meta["batch"] == "dynamic" else int(meta["batch"])
    paths = calibration_images(calib_data, calib_images)
    exclude = fp32_node_names(fp32, keep_fp32)
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    reader = _Calibration(paths, hw, meta["letter_box"] == "1", batch)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        warnings.simplefilter("ignore")
        tmp_out = Path(tmp) / out.name
        quantize_static(str(fp32), str(tmp_out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=calib, op_types_to_quantize=list(op_types) if op_types else None,
                        extra_options={"CalibMovingAverage": False, "CalibTensorRangeSymmetric": False})
        set_metadata(tmp_out, meta | {"precision": "int8", "quantization": json.dumps({
            "format": "QDQ", "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
            "activations": "uint8", "calibration": method, "calibration_images": len(paths),
            "calibration_data": str(calib_data), "fp32": keep_fp32})})
        tmp_out.replace(out)
    return out


if __name__ == "__main__":  # python -m yolo.export: the command line lives in yolo.cli.export
    from .cli.export import main

    sys.exit(main())
