"""``python detect.py``: run a detector on images, folders, globs, lists, videos or a webcam.

With no arguments it runs the shipped COCO model on ``data/samples`` and writes annotated
images to a new ``runs/detect/expN`` folder.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from ..cfg import REPO_ROOT
from ..classify import is_classifier, predict_source
from ..detector import DetectError, Detector
from ..outputs import Summary, detect_source
from ..sources import resolve_source
from .common import (
    ArgumentParser,
    UserError,
    add_img_size_arg,
    add_model_args,
    engine_args,
    increment_dir,
    parse_device,
    parse_img_size,
    user_errors,
)

DEFAULT_SOURCE = REPO_ROOT / "data" / "samples"


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--names", default=None,
                   help="class names, one per line (default: the checkpoint's, else data/coco.names "
                        "for an 80-class model, else class numbers)")
    p.add_argument("--source", default=str(DEFAULT_SOURCE),
                   help="image, folder, glob, .txt list of images, video file, stream URL or webcam index")
    add_img_size_arg(p, "network input (default: the cfg's)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="score threshold (objectness x class)")
    p.add_argument("--nms-thres", type=float, default=0.45, help="IoU threshold of per-class NMS")
    p.add_argument("--max-det", type=int, default=100, help="at most this many detections per image")
    p.add_argument("--classes", nargs="+", default=None, metavar="C",
                   help="keep only these classes (ids or names)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or N")
    p.add_argument("--batch-size", type=int, default=8, help="images or video frames per forward pass")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads decoding and writing images (0: none, all in the main thread)")
    p.add_argument("--output", default=None, help="output folder (default: a new runs/detect/expN)")
    p.add_argument("--save-txt", action="store_true",
                   help="write labels/<image>.txt: class cx cy w h score, normalised to the image size")
    p.add_argument("--save-json", action="store_true",
                   help="write <output>/detections.json: file, class_id, class_name, score, bbox_xyxy")
    p.add_argument("--view", action="store_true", help="show results in a window (needs OpenCV with a GUI)")
    p.add_argument("--no-save", action="store_true", help="do not write annotated images or videos")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no per-image lines")
    return p


def run(args: argparse.Namespace) -> Summary:
    """Build the detector from parsed arguments and run it; the CLI's whole job."""
    device = parse_device(args.device)
    if args.batch_size < 1 or args.workers < 0:
        raise UserError(f"--batch-size must be positive and --workers >= 0, got {args.batch_size}, {args.workers}")
    source = resolve_source(args.source)  # before loading the model: a typo fails fast
    img_size = parse_img_size(args.img_size)
    detector = Detector(names=args.names, device=device, img_size=img_size, conf_thres=args.conf_thres,
                        nms_thres=args.nms_thres, max_det=args.max_det, classes=args.classes,
                        batch_size=args.batch_size, **engine_args(args))
    if not args.quiet:
        print(f"engine: {detector.engine.describe()}")
    writes = not args.no_save or args.save_txt or args.save_json
    output = Path(args.output) if args.output else (increment_dir(Path("runs") / "detect") if writes else None)
    return detect_source(detector, source, output, save=not args.no_save, save_txt=args.save_txt,
                         save_json=args.save_json, view=args.view, batch_size=args.batch_size,
                         workers=args.workers, progress=not args.no_progress, verbose=not args.quiet)


@user_errors(DetectError)
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if is_classifier(args.cfg):  # class scores, no detection head: Darknet's `classifier predict` (yolo.classify)
        predict_source(args.cfg, args.weights, args.source, args.names, parse_device(args.device),
                       parse_img_size(args.img_size))
        return 0
    summary = run(args)
    print(summary.line())
    if summary.output is not None and (summary.saved or args.save_txt):
        print(f"results saved to {summary.output}")
    return 0

