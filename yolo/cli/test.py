"""``python test.py``: COCO mAP (pycocotools COCOeval, bbox) of a model on a Darknet or COCO dataset.

Prints the 12 COCOeval numbers, a per-class AP table and the speed per image; optionally
writes the detections (COCO results json), a metrics json and precision-recall plots.
``--metric darknet`` prints Darknet's own ``detector map`` report instead (its resize, NMS,
matching and averaging; mAP@0.50 with 101 or 11 recall points or the area under the curve)
and adds a ``darknet`` block to the metrics json. Under ``torchrun`` every rank predicts its
share of the images and rank 0 scores them all once and reports (the same figures as one process).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .common import (
    ArgumentParser,
    UserError,
    add_img_size_arg,
    add_model_args,
    engine_args,
    parse_device,
    parse_img_size,
    user_errors,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True,
                   help="Darknet .data file, COCO instances .json, or an image list .txt")
    p.add_argument("--images", default=None,
                   help="image folder of a COCO json (default: <split>_images in the .data file, or the "
                        "COCO layout annotations/instances_X.json -> X/)")
    p.add_argument("--split", default="valid", help="key of the .data file to evaluate")
    add_img_size_arg(p, "network input (default: the cfg's)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--metric", choices=("coco", "darknet"), default="coco",
                   help="coco: pycocotools COCOeval; darknet: Darknet's 'detector map' report "
                        "(the COCO figures are still in the metrics json, on the same detections)")
    p.add_argument("--points", type=int, choices=(101, 11, 0), default=101,
                   help="--metric darknet: recall points of AP (101 MS COCO style, 11 PascalVOC 2007, "
                        "0 area under the curve at each unique recall)")
    p.add_argument("--iou-thres", type=float, default=0.5, help="--metric darknet: IoU a match must exceed")
    p.add_argument("--conf-thres-report", type=float, default=0.25,
                   help="--metric darknet: score above which precision, recall, F1, TP, FP, FN and "
                        "average IoU are reported (Darknet's -thresh)")
    p.add_argument("--conf-thres", type=float, default=None,
                   help="score threshold (objectness x class) of the candidates (default: 0.001; "
                        "0.005 with --metric darknet, as Darknet)")
    p.add_argument("--nms-thres", type=float, default=0.45, help="IoU threshold of per-class NMS")
    p.add_argument("--max-det", type=int, default=None,
                   help="at most this many detections per image, 0: no limit (default: 100; no limit "
                        "with --metric darknet, as Darknet)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or N")
    p.add_argument("--workers", type=int, default=min(4, max(1, (os.cpu_count() or 1) // 2)),
                   help="threads reading and resizing images ahead of the engine (0: in the main thread; "
                        "default: 1 on 2 cores, 2 on 4, 4 on 8 or more)")
    p.add_argument("--save-json", default=None, metavar="FILE", help="write the detections as COCO results json")
    p.add_argument("--metrics-json", default=None, metavar="FILE", help="write the metrics as json")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write precision-recall curves, a confusion matrix, P / R / F1 against the confidence "
                        "threshold and predicted vs true boxes on a few images (PNG) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Data warnings already name their file and line: print them as one plain line."""
    print(f"warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load model and data from parsed arguments and evaluate; the CLI's whole job."""
    from ..datasets import load_dataset
    from ..sharding import sharded_session

    device = parse_device(args.device)
    if args.batch_size < 1 or args.workers < 0 or (args.max_det is not None and args.max_det < 0):
        raise UserError(f"--batch-size must be positive and --max-det and --workers >= 0, got "
                        f"{args.batch_size}, {args.max_det}, {args.workers}")
    if (args.conf_thres is not None and not 0 <= args.conf_thres < 1) or not 0 < args.nms_thres <= 1:
        raise UserError(f"--conf-thres must be in [0, 1) and --nms-thres in (0, 1], got "
                        f"{args.conf_thres}, {args.nms_thres}")
    if not 0 <= args.iou_thres < 1 or not 0 <= args.conf_thres_report < 1:
        raise UserError(f"--iou-thres and --conf-thres-report must be in [0, 1), got "
                        f"{args.iou_thres}, {args.conf_thres_report}")
    info = load_dataset(args.data, args.images, split=args.split)  # before the model: a typo fails fast
    if not info.records:
        raise UserError(f"{info.source}: no usable images")
    with sharded_session(device) as (rank, world, device):  # under torchrun: each rank its share of images
        return _evaluate(args, info, device, rank, world)


def _evaluate(args: argparse.Namespace, info: Any, device: Any, rank: int, world: int) -> dict[str, Any]:
    """The evaluation proper; under torchrun rank 0 returns the figures of the whole set, the others {}."""
    from ..backends import load_backend
    from ..evaluate import evaluate

    img_size = parse_img_size(args.img_size)
    model = load_backend(device=device, img_size=img_size, **engine_args(args))
    if model.name == "torch" and args.threads is None and args.workers and device.type == "cpu" \
            and "OMP_NUM_THREADS" not in os.environ:
        # Leave the reading threads their cores: torch threads that outnumber free cores spin in OpenMP
        # barriers (measured 4x slower inference on 2 cores with 2 workers + 2 threads). onnxruntime
        # (spinning off) and OpenCV keep every core: on coco128, 2 cores, 1 reader, 2 onnxruntime
        # threads took 7.5 s against 9.0 s with 1 (medians of 3, machine busy)
        from ..backends.threads import set_threads

        set_threads(max(1, (os.cpu_count() or 1) - args.workers))
    print(f"{len(info.records)} images from {info.source}"
          + (f" (skipped: {info.problems.summary()})" if info.problems else ""), file=sys.stderr)
    if rank == 0:
        print(f"engine: {model.describe()}", file=sys.stderr)
    predictions: list | None = [] if args.plots else None
    metrics = evaluate(model, info, img_size=img_size, batch_size=args.batch_size, conf_thres=args.conf_thres,
                       nms_thres=args.nms_thres, max_det=args.max_det, workers=args.workers, device=device,
                       save_json=args.save_json, plots_dir=args.plots, verbose=not args.no_progress,
                       metric=args.metric, points=args.points, iou_thres=args.iou_thres,
                       conf_thres_report=args.conf_thres_report, predictions=predictions,
                       shard=(rank, world) if world > 1 else None)
    if not metrics:
        return metrics
    if args.plots:
        from ..plots_train import eval_pictures

        metrics.setdefault("plots", []).extend(str(p) for p in eval_pictures(predictions, info.names, args.plots))
    metrics["data_problems"] = dict(info.problems.counts)
    return metrics


@user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    from ..darknet_map import format_darknet_report
    from ..datasets import DataError
    from ..evaluate import EvalError, format_report, format_speed

    args = get_args_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            metrics = run(args)
        except (DataError, EvalError) as e:
            raise UserError(str(e)) from None
    if not metrics:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    if "darknet" in metrics:
        print(format_darknet_report(metrics["darknet"]))
        print(format_speed(metrics))
    else:
        if args.no_progress:  # evaluate printed the COCOeval summary only with progress on
            from ..evaluate import STAT_NAMES
            for name, value in zip(STAT_NAMES, metrics["stats"]):
                print(f"{name:<28} = {value:.3f}")
        print(format_report(metrics))
    if args.save_json:
        print(f"detections written to {args.save_json}")
    if args.metrics_json:
        path = Path(args.metrics_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=1))
        print(f"metrics written to {path}")
    for p in metrics.get("plots", []):
        print(f"plot written to {p}")
    return 0
