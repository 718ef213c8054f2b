"""Evaluation: model predictions + ground truth (either dataset form) -> pycocotools COCOeval (bbox).

The number users compare models by must be the number the field means, so every AP here
comes from COCOeval: the 12 summary numbers from ``summarize()``, per-class AP and the PR
curves by slicing COCOeval's own ``precision`` array (shape [T, R, K, A, M]: IoU thresholds x
101 recall points x classes x area ranges x maxDets; -1 where a class has no ground truth),
exactly as ``summarize()`` does for all classes.

Pre- and post-processing are ``boxes.fit_image`` / ``boxes.postprocess``: the same code as detect.
The whole path (reading, resizing, the engine, NMS, pycocotools) runs on numpy and OpenCV; torch is
imported only when the torch engine runs (a ``Darknet`` given, or ``backend="torch"``) or under
``torchrun`` (:mod:`yolo.sharding`). Images are read ahead in threads (:mod:`yolo.eval_data`).

``metric="darknet"`` adds Darknet's own ``detector map`` report (:mod:`yolo.darknet_map`) on
the same detections, with Darknet's settings: candidates above 0.005, NMS 0.45, no cap on
detections per image, boxes not clipped to the image, crowd boxes left out of the truth.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from .backends import NMS_KEYS, Backend, BackendError, ModelInfo, load_backend
from .backends.base import as_input
from .boxes import Geometry, box_convert, denormalize_boxes, postprocess
from .darknet_map import POINTS, darknet_letterbox_placement, darknet_map, darknet_nms, darknet_resize
from .datasets import DatasetInfo, DataWarning, ImageRecord, Problems
from .errors import YoloError
from .eval_data import EvalDataset, eval_batches
from .io import atomic_write, imread
from .plots import plot_pr_curves

if TYPE_CHECKING:
    import torch

STAT_NAMES = [
    "AP@[.5:.95] all", "AP@.5 all", "AP@.75 all", "AP@[.5:.95] small", "AP@[.5:.95] medium",
    "AP@[.5:.95] large", "AR@[.5:.95] all maxDets=1", "AR@[.5:.95] all maxDets=10",
    "AR@[.5:.95] all maxDets=100", "AR@[.5:.95] small", "AR@[.5:.95] medium", "AR@[.5:.95] large",
]


class EvalError(YoloError):
    """A model and a dataset that cannot be evaluated together (e.g. class counts differ)."""


# ---------------------------------------------------------------------------------------------
# ground truth and detections in COCO form
# ---------------------------------------------------------------------------------------------
def ground_truth_coco(info: DatasetInfo, records: Sequence[ImageRecord],
                      sizes_hw: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Records -> a COCO instances dict (images with width/height, bbox xywh in pixels, area, iscrowd).

    ``sizes_hw`` gives each image's (height, width) where the record does not know it (Darknet
    form: read from the image). Areas are COCO's own (segment area) when the records carry them,
    else box areas, so APs/APm/APl match the official json on COCO data.
    """
    images, anns = [], []
    for n, rec in enumerate(records):
        h = rec.height if rec.height is not None else (sizes_hw[n][0] if sizes_hw else None)
        w = rec.width if rec.width is not None else (sizes_hw[n][1] if sizes_hw else None)
        if h is None or w is None:
            raise EvalError(f"{rec.path}: image size unknown (read the image first)")
        images.append({"id": int(rec.image_id), "width": int(w), "height": int(h), "file_name": rec.path.name})
        lab = rec.labels.astype(np.float64)
        xywh = box_convert(denormalize_boxes(lab[:, 1:5], w, h), "cxcywh", "xywh")
        areas = rec.areas if rec.areas is not None else xywh[:, 2] * xywh[:, 3]
        for k in range(len(lab)):
            anns.append({"id": len(anns) + 1, "image_id": int(rec.image_id),
                         "category_id": int(info.category_ids[int(lab[k, 0])]),
                         "bbox": [float(v) for v in xywh[k]],
                         "area": float(areas[k]),  # VOC difficult: out of the truth, as crowd
                         "iscrowd": int(bool(rec.crowd[k]) or bool(rec.difficult[k]))})
    cats = [{"id": int(c), "name": name} for c, name in zip(info.category_ids, info.names)]
    return {"info": {"description": info.source}, "images": images, "annotations": anns, "categories": cats}


def ground_truth_as_detections(gt: dict[str, Any]) -> np.ndarray:
    """Every non-crowd ground-truth box as a detection with score 1 (a check of the conversion)."""
    rows = [[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in gt["annotations"] if not a["iscrowd"]]
    return np.asarray(rows, np.float64).reshape(-1, 7)


def darknet_ground_truth(records: Sequence[ImageRecord], sizes_hw: Sequence[tuple[int, int]]
                         ) -> list[np.ndarray]:
    """Each image's non-crowd truth as ``(M, 5)`` x1, y1, x2, y2, class in pixels (Darknet-form
    labels cannot mark crowd boxes, so both dataset forms give Darknet's figures)."""
    out = []
    for rec, (h, w) in zip(records, sizes_hw):
        lab = rec.labels[~(rec.crowd.astype(bool) | rec.difficult.astype(bool))].astype(np.float64)
        rows = np.empty((len(lab), 5))
        rows[:, :4] = box_convert(denormalize_boxes(lab[:, 1:5], w, h), "cxcywh", "xyxy")
        rows[:, 4] = lab[:, 0]
        out.append(rows)
    return out


def detections_to_json(dets: np.ndarray) -> list[dict[str, Any]]:
    """(N, 7) image_id, x, y, w, h, score, category_id -> COCO results list."""
    return [{"image_id": int(d[0]), "category_id": int(d[6]),
             "bbox": [round(float(v), 3) for v in d[1:5]], "score": round(float(d[5]), 5)} for d in dets]


def coco_eval(gt: dict[str, Any], dets: np.ndarray, img_ids: Sequence[int] | None = None,
              verbose: bool = False) -> Any:
    """Run COCOeval (bbox) on a ground-truth dict and (N, 7) detections; returns the COCOeval or
    None when there is nothing to score (no detections)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(dets) == 0:
        return None
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(np.asarray(dets, np.float64))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
    if verbose:
        ev.summarize()
    else:
        with contextlib.redirect_stdout(quiet):
            ev.summarize()
    return ev


def per_class_ap(ev: Any, info: DatasetInfo, gt: dict[str, Any]) -> dict[str, dict[str, float]]:
    """AP@[.5:.95] and AP@.5 of each class with (non-crowd) ground truth, from COCOeval's precision."""
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    cat_index = {c: k for k, c in enumerate(ev.params.catIds)}
    gt_count: dict[int, int] = {}
    for a in gt["annotations"]:
        if not a["iscrowd"]:
            gt_count[a["category_id"]] = gt_count.get(a["category_id"], 0) + 1
    out: dict[str, dict[str, float]] = {}
    for name, cid in zip(info.names, info.category_ids):
        if not gt_count.get(cid) or cid not in cat_index:
            continue
        p = precision[:, :, cat_index[cid], 0, -1]
        p50 = p[0]
        out[name] = {"ap": float(p[p > -1].mean()) if (p > -1).any() else -1.0,
                     "ap50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0,
                     "gt": gt_count[cid]}
    return out


class DarknetEvalDataset(EvalDataset):
    """Images resized as Darknet's ``detector map`` does (:func:`darknet_resize`, float, corner
    aligned; ``letterbox_image`` with grey 0.5 when ``letter_box``), as float32 HWC BGR 0..255."""

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int, Geometry | str, float]:
        t0 = time.perf_counter()
        img, reason = imread(self.records[i].path)
        if img is None:
            return None, i, reason, time.perf_counter() - t0
        h0, w0 = img.shape[:2]
        h, w = self.size_hw
        if not self.letter_box:
            out = darknet_resize(img, w, h)
            geom = Geometry((h0, w0), (w / w0, h / h0), (0.0, 0.0))
        else:
            nw, nh, left, top = darknet_letterbox_placement((w0, h0), (w, h))
            out = np.full((h, w, img.shape[2]), 127.5, np.float32)
            out[int(top):int(top) + nh, int(left):int(left) + nw] = darknet_resize(img, nw, nh)
            geom = Geometry((h0, w0), (nw / w0, nh / h0), (left, top))
        return out, i, geom, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# the evaluation loop
# ---------------------------------------------------------------------------------------------
def _size_hw(model: ModelInfo, img_size: int | Sequence[int] | None) -> tuple[int, int]:
    if img_size is None:
        return tuple(model.input_size)  # type: ignore[return-value]
    if isinstance(img_size, int):
        size = (img_size, img_size)
    else:
        size = tuple(int(s) for s in img_size)
        size = (size[0], size[0]) if len(size) == 1 else size[:2]
    stride = model.max_stride
    if size[0] <= 0 or size[1] <= 0 or size[0] % stride or size[1] % stride:
        raise EvalError(f"image size {size[0]}x{size[1]} (h x w): each side must be a positive multiple "
                        f"of the network's stride {stride}")
    return size  # type: ignore[return-value]


def _engine(model: "torch.nn.Module | Backend | str | Path", device: "str | torch.device | None", fuse: bool,
            precision: str = "fp32", backend: str | None = None, threads: int | None = None,
            cfg: str | Path | None = None, img_size: int | Sequence[int] | None = None
            ) -> tuple[Backend, bool | None]:
    """The engine to evaluate with, and the caller's training flag to restore (None: not a module).

    ``model`` an engine: used as it is. A weights file (``.weights``, ``.pt``, ``.onnx``): loaded by
    :func:`yolo.backends.load_backend` with ``cfg``, ``backend`` (None: by the file's suffix;
    ``"auto"``: the measured fastest, else the documented order) and ``img_size`` (auto's choice
    depends on it). A ``Darknet`` (torch imported by its caller) runs on the torch engine and is
    never moved or changed: a copy goes to another device, gets fused or is cast to ``precision``
    (which then implies fusing)."""
    if threads is not None:
        from .backends.threads import set_threads

        set_threads(threads)
    if isinstance(model, Backend):
        if backend not in (None, model.name):
            raise EvalError(f"backend={backend!r} asked for, but the engine given is {model.name}: "
                            "pass the weights file instead to have it loaded by that engine")
        if precision not in ("fp32", model.precision):
            raise EvalError(f"precision={precision!r} asked for, but the engine given runs {model.precision}: "
                            "build the engine in that precision instead")
        return model, None
    if isinstance(model, (str, Path)):
        try:
            return load_backend(cfg, model, backend, precision, device if device is not None else "cpu",
                                threads=threads, img_size=img_size), None
        except BackendError as e:
            raise EvalError(str(e)) from None
    if backend not in (None, "torch", "auto"):
        raise EvalError(f"backend={backend!r}: a model in memory runs on the torch engine only; pass its "
                        "weights file (and cfg=) to evaluate it with another engine")
    import torch

    from .backends.pytorch import TorchBackend

    device = torch.device(str(device)) if device is not None else next(model.parameters()).device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    was_training = model.training
    net = model
    if next(model.parameters()).device != device:
        net = copy.deepcopy(model).to(device)
    if (fuse or precision != "fp32") and not getattr(net, "fused", False):
        net = (copy.deepcopy(net) if net is model else net).fuse()
    elif precision != "fp32" and net is model:  # the engine casts the model it is handed
        net = copy.deepcopy(net)
    engine = TorchBackend(net.eval(), precision, device)
    if backend == "auto":
        plain = engine.describe()
        why = "a model in memory: only the torch engine holds it"
        engine.describe = lambda: f"{plain} (auto: {why})"  # type: ignore[method-assign]
        engine.info.extra["auto"] = why
    return engine, was_training


def evaluate(model: "torch.nn.Module | Backend | str | Path", info: DatasetInfo,
             img_size: int | Sequence[int] | None = None,
             batch_size: int = 16, conf_thres: float | None = None, nms_thres: float = 0.45,
             max_det: int | None = None, workers: int = 2, device: "str | torch.device | None" = None,
             save_json: str | Path | None = None, plots_dir: str | Path | None = None, verbose: bool = True,
             letter_box: bool | None = None, fuse: bool = False, metric: str = "coco", points: int = 101,
             iou_thres: float = 0.5, conf_thres_report: float = 0.25,
             precision: str = "fp32", predictions: list | None = None,
             shard: tuple[int, int] | None = None, backend: str | None = None, threads: int | None = None,
             cfg: str | Path | None = None) -> dict[str, Any]:
    """COCO mAP of ``model`` on ``info`` (the function train.py calls after each epoch).

    ``model`` is a ``Darknet`` (run by the torch engine), any engine of :mod:`yolo.backends`
    (onnxruntime, OpenCV, reduced precision), or a weights file (``.weights`` / ``.pt`` with
    ``cfg=``, or an ``.onnx``) that ``backend`` loads: None by its suffix, ``"auto"`` the engine
    ``python -m yolo.benchmark`` measured fastest for this model, size and machine, else the
    documented order of :mod:`yolo.backends.auto` (``metrics["engine"]`` says which and why).
    ``threads``: CPU threads of the engine (default: all cores). Pre- and post-processing are
    the same for all, and torch is imported only when the torch engine runs. The
    caller's model is left as it was (mode restored; with ``fuse=True`` a fused copy is
    evaluated; ``precision`` "bf16" / "fp16" evaluates a fused copy in that precision, see
    :mod:`yolo.backends.pytorch`). Unreadable images are warned about, skipped and left out of the
    ground truth, so the rest is still scored. ``workers``: threads reading and resizing images
    ahead of the engine (0: in the calling thread). Returns the metrics dict: map, map50, map75,
    stats (the 12 COCOeval numbers), per_class {name: {ap, ap50, gt}}, images, skipped, detections,
    engine, ms_per_image {preprocess, inference, nms}.

    ``metric="darknet"`` also returns ``darknet``: Darknet's ``detector map`` report
    (:func:`yolo.darknet_map.darknet_map`: mAP@``iou_thres`` with ``points`` recall points, 0 for
    the area under the curve; precision, recall, F1, TP, FP, FN, avg IoU at ``conf_thres_report``;
    per class ap, tp, fp). Its defaults are Darknet's: ``conf_thres`` 0.005 (COCO: 0.001) and no
    cap on detections per image (COCO: ``max_det`` 100); ``max_det=0`` means no cap. The COCO
    figures are then computed on those same detections.

    ``predictions``: a list that gets ``(record, dets, (h, w))`` for each image scored, ``dets``
    ``[K, 6]`` x1 y1 x2 y2 (original pixels, clipped) score class (what the pictures of
    :mod:`yolo.plots_train` draw and match).

    ``shard=(rank, world)`` (under torchrun, the process group up): this rank predicts
    ``records[rank::world]`` only, rank 0 gathers every rank's predictions (:mod:`yolo.sharding`)
    and returns the figures of the whole set, the same detections as one process; the other ranks
    return ``{}``.
    """
    if metric not in ("coco", "darknet"):
        raise EvalError(f"metric must be 'coco' or 'darknet', got {metric!r}")
    darknet = metric == "darknet"
    if darknet and (points not in POINTS and points < 2):
        raise EvalError(f"points must be 101, 11 or 0 (area under the curve), got {points}")
    if conf_thres is None:
        conf_thres = 0.005 if darknet else 0.001
    if max_det is None:
        max_det = 0 if darknet else 100
    engine, was_training = _engine(model, device, fuse, precision, backend, threads, cfg, img_size)
    minfo = engine.info
    if minfo.num_classes != info.num_classes:
        raise EvalError(f"{info.source}: the dataset has {info.num_classes} classes but the model "
                        f"({minfo.cfg_name}) predicts {minfo.num_classes}")
    size_hw = _size_hw(minfo, img_size)
    if letter_box is None:
        letter_box = minfo.letter_box
    problems = Problems()
    records = info.records
    todo = records if shard is None else records[shard[0]::shard[1]]
    dataset_cls = DarknetEvalDataset if darknet else EvalDataset  # Darknet resizes its own way
    loader = eval_batches(dataset_cls(todo, size_hw, letter_box), batch_size, workers)
    nms = _nms(minfo, darknet, conf_thres, nms_thres, max_det, size_hw)
    try:
        run = _predict(engine, loader, nms, todo, problems, verbose)
    finally:
        if was_training is not None:
            model.train(was_training)
    if shard is not None:
        from .sharding import gather_to_first

        rank, world = shard
        mine = ({rank + i * world: v for i, v in run.outputs.items()}, run.seconds, problems.counts)
        parts = gather_to_first(mine, world)
        if parts is None:
            return {}
        run = _Predictions({i: v for outs, _, _ in parts for i, v in outs.items()},
                           {k: sum(p[1][k] for p in parts) for k in run.seconds})
        for _, _, counts in parts[1:]:
            problems.counts.update(counts)

    done = sorted(run.outputs)
    sizes = [run.outputs[i][1].orig_hw for i in done]
    eval_records = [records[i] for i in done]
    dets = _coco_detections(run, records, info.category_ids)
    if predictions is not None:
        for i in done:
            out, geom = run.outputs[i]
            predictions.append((records[i], np.column_stack((geom.to_original(out[:, :4], dtype=np.float64),
                                                             out[:, 4:6])).reshape(-1, 6), geom.orig_hw))
    if save_json:
        with atomic_write(save_json, "w") as f:
            json.dump(detections_to_json(dets), f)
    n = max(len(done), 1)
    metrics: dict[str, Any] = {
        "images": len(done), "skipped": len(records) - len(done), "detections": int(len(dets)),
        "img_size": list(size_hw), "letter_box": letter_box, "engine": engine.describe(),
        "ms_per_image": {k: 1e3 * v / n for k, v in run.seconds.items()},
    }
    if darknet:  # Darknet does not clip its boxes to the image
        raw = [np.concatenate((g.to_original(o[:, :4], clip=False, dtype=np.float64), o[:, 4:]), 1)
               for o, g in (run.outputs[i] for i in done)]
        metrics["darknet"] = darknet_map(raw, darknet_ground_truth(eval_records, sizes), info.num_classes,
                                         info.names, iou_thres=iou_thres, conf_thres=conf_thres_report,
                                         points=points)
    metrics.update(_coco_metrics(info, eval_records, sizes, dets, plots_dir, verbose and not darknet))
    if done and not len(dets):
        problems.add("no detections", f"{info.source}: the model made no detection above conf {conf_thres}; "
                                      "mAP is 0")
    metrics["problems"] = dict(problems.counts)
    return metrics


def _nms(minfo: ModelInfo, darknet: bool, conf_thres: float, nms_thres: float, max_det: int,
         size_hw: tuple[int, int]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The post-processing of one batch: ours (``boxes.postprocess``, per-class NMS, at most
    ``max_det``), or Darknet's own NMS kind read from its last head (``ModelInfo.extra``: the head's
    ``nms_settings()``), uncapped unless max_det > 0."""
    if not darknet:
        return lambda pred: postprocess(pred, conf_thres, nms_thres, max_det if max_det > 0 else None)
    head_nms = {k: minfo.extra[k] for k in NMS_KEYS if k in minfo.extra}  # absent: darknet_nms's plain IoU NMS

    def nms(pred: np.ndarray) -> list[np.ndarray]:  # (a torch tensor too: engines of before the numpy contract)
        outs = [darknet_nms(p, conf_thres, nms_thres, input_wh=(size_hw[1], size_hw[0]), **head_nms)
                for p in as_input(pred)[0]]
        return [o[np.argsort(-o[:, 4], kind="stable")[:max_det]] for o in outs] if max_det > 0 else outs
    return nms


@dataclass
class _Predictions:
    """Per record index: detections ``[K, 6]`` (x1, y1, x2, y2 in input pixels, score, class) and the
    geometry that maps them back; seconds spent per stage."""

    outputs: dict[int, tuple[np.ndarray, Geometry]]
    seconds: dict[str, float]


def _predict(engine: Backend, loader: Any, nms: Callable[[np.ndarray], list[np.ndarray]],
             records: Sequence[ImageRecord], problems: Problems, verbose: bool) -> _Predictions:
    """Every readable image through the engine and ``nms``; unreadable ones named and counted.
    (Engines answer on the CPU, numpy: the time of a GPU engine includes its copy back.)"""
    outputs: dict[int, tuple[np.ndarray, Geometry]] = {}
    seconds = {"preprocess": 0.0, "inference": 0.0, "nms": 0.0}
    bar = tqdm(total=len(records), desc="test", unit="img", disable=not verbose, leave=False)
    for batch in loader:
        bar.update(len(batch.skipped))
        for i, reason in batch.skipped:
            problems.add("unreadable image", f"{records[i].path}: {reason}; skipped (left out of the "
                                             "ground truth too)")
        if not batch.indices:
            continue
        t1 = time.perf_counter()
        pred = engine(batch.images)
        t2 = time.perf_counter()
        for i, geom, out in zip(batch.indices, batch.geometries, nms(pred)):
            outputs[i] = (out, geom)
        seconds["preprocess"] += batch.preprocess_s
        seconds["inference"] += t2 - t1
        seconds["nms"] += time.perf_counter() - t2
        bar.update(len(batch.indices))  # once predicted, not when read ahead
    bar.close()
    return _Predictions(outputs, seconds)


def _coco_detections(run: _Predictions, records: Sequence[ImageRecord], category_ids: Sequence[int]) -> np.ndarray:
    """``[M, 7]`` rows image_id, x, y, w, h (original pixels, clipped), score, category_id."""
    ids = np.asarray(category_ids, np.float64)
    chunks = []
    for i in sorted(run.outputs):
        out, geom = run.outputs[i]
        if len(out):
            xywh = box_convert(geom.to_original(out[:, :4], dtype=np.float64), "xyxy", "xywh")
            chunks.append(np.column_stack((np.full(len(out), records[i].image_id, np.float64), xywh,
                                           out[:, 4], ids[out[:, 5].astype(np.int64)])))
    return np.concatenate(chunks) if chunks else np.zeros((0, 7))


def _coco_metrics(info: DatasetInfo, records: Sequence[ImageRecord], sizes: Sequence[tuple[int, int]],
                  dets: np.ndarray, plots_dir: str | Path | None, verbose: bool) -> dict[str, Any]:
    """pycocotools' figures for ``dets``: map, map50, map75, stats, per_class (and PR curve PNGs)."""
    gt = ground_truth_coco(info, records, sizes)
    ev = coco_eval(gt, dets, [r.image_id for r in records], verbose=verbose) if records else None
    out: dict[str, Any] = {"per_class": {}}
    stats = [0.0] * 12
    if ev is not None:
        stats = [float(v) for v in ev.stats]
        out["per_class"] = per_class_ap(ev, info, gt)
        if plots_dir:
            out["plots"] = [str(p) for p in plot_pr_curves(ev, info, plots_dir)]
    out.update({"map": stats[0], "map50": stats[1], "map75": stats[2], "stats": stats})
    return out


def format_report(metrics: dict[str, Any]) -> str:
    """The per-class AP table and the speed line, as test.py prints them."""
    lines = [f"{'class':<20}{'gt':>7}{'AP@[.5:.95]':>13}{'AP@.5':>9}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<20}{row['gt']:>7}{row['ap']:>13.3f}{row['ap50']:>9.3f}")
    lines.append(f"{'all':<20}{sum(r['gt'] for r in metrics['per_class'].values()):>7}"
                 f"{metrics['map']:>13.3f}{metrics['map50']:>9.3f}")
    lines.append(format_speed(metrics))
    return "\n".join(lines)


def format_speed(metrics: dict[str, Any]) -> str:
    """The speed line: ms per image for preprocessing, inference and NMS."""
    ms = metrics["ms_per_image"]
    h, w = metrics["img_size"]
    return (f"speed: {ms['preprocess']:.1f} ms preprocess, {ms['inference']:.1f} ms inference, "
            f"{ms['nms']:.1f} ms NMS per image at {h}x{w} ({metrics['images']} images"
            + (f", {metrics['skipped']} skipped" if metrics["skipped"] else "") + ")")


__all__ = ["evaluate", "coco_eval", "ground_truth_coco", "darknet_ground_truth", "ground_truth_as_detections",
           "per_class_ap", "plot_pr_curves", "format_report", "format_speed", "DarknetEvalDataset", "EvalError",
           "STAT_NAMES", "DataWarning"]
