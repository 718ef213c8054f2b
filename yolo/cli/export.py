"""``python -m yolo.export``: the command line of :mod:`yolo.export` (argument parsing only).

Kept out of the library module so that exporting (which the model's ``export_onnx`` calls)
never imports the command line, the weights loader or the engines.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .. import export
from ..backends.base import BackendError
from ..export import (
    CALIBRATION_METHODS,
    DEFAULT_CALIB_IMAGES,
    DEFAULT_KEEP_FP32,
    OPSET,
    ExportError,
    export_onnx,
    quantize_int8,
)
from ..model import Darknet
from ..weights_file import load_weights
from .common import (
    DEFAULT_CFG,
    DEFAULT_WEIGHTS,
    ArgumentParser,
    UserError,
    add_img_size_arg,
    parse_img_size,
    user_errors,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m yolo.export", description=export.__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", default=str(DEFAULT_CFG), help="Darknet cfg (path, or a name in cfg/)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="Darknet .weights or a .pt checkpoint")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    add_img_size_arg(p, "input (default: the cfg's)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--batch", type=int, default=1, help="fixed batch size")
    shape.add_argument("--dynamic", action="store_true",
                       help="dynamic batch, height and width (any multiple of the network stride)")
    p.add_argument("--names", default=None, help="class names file to store (default: the checkpoint's, or "
                   "data/coco.names for 80 classes)")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    p.add_argument("--int8", action="store_true", help="also write an INT8 (QDQ) copy, <out>-int8.onnx "
                   "(or --out itself with --int8-only)")
    p.add_argument("--int8-only", action="store_true", help="with --int8: write only the INT8 file, at --out")
    p.add_argument("--calib-data", default=None,
                   help="calibration images: a folder, a .data file, a COCO .json or an image list")
    p.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, help="images used to calibrate")
    p.add_argument("--calib-method", choices=CALIBRATION_METHODS, default="percentile",
                   help="activation range calibration")
    p.add_argument("--keep-fp32", default=DEFAULT_KEEP_FP32,
                   help="what stays fp32, a comma list of: none, decode (the [yolo] decode), heads (decode + "
                        "the heads' last convolutions), first (the first convolution), depthwise")
    p.add_argument("--quantize-ops", default=None,
                   help="comma list of ONNX op types to quantise (default: onnxruntime's QDQ list)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    return p


def _int8_path(out: Path) -> Path:
    return out.with_name(out.stem + "-int8" + out.suffix)


@user_errors(ExportError)
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        from ..backends.ort import INSTALL
        raise BackendError(INSTALL) from None
    if args.int8 and args.calib_data is None:
        raise UserError("--int8 needs --calib-data (a folder of images, a .data file or a COCO .json)")
    if args.int8_only and not args.int8:
        raise UserError("--int8-only goes with --int8")
    if str(args.weights).lower().endswith(".onnx"):
        raise UserError(f"--weights {args.weights}: already ONNX; give the .weights or .pt it came from")
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: expected a .onnx file name")
    model = Darknet(args.cfg)
    state = load_weights(model, args.weights)
    names = args.names if args.names is not None else state.get("names") or None
    img_size = parse_img_size(args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if args.int8_only else out
        export_onnx(model, fp32, img_size, args.batch, args.dynamic, names, args.opset, check=not args.no_check)
        if not args.int8_only:
            print(f"fp32 model written to {out}")
        if args.int8:
            target = out if args.int8_only else _int8_path(out)
            quantize_int8(fp32, target, args.calib_data, args.calib_images, args.calib_method, args.keep_fp32,
                          op_types=args.quantize_ops.split(",") if args.quantize_ops else None)
            print(f"int8 model written to {target} (calibrated on {args.calib_data}, {args.calib_method}; "
                  f"fp32: {args.keep_fp32})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
